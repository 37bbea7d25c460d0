"""Which causal-LM families the emulator supports: build a tiny random instance of each, run the checks.

Every model type in transformers' causal-LM mapping is built from a small config (random weights,
no hub) and put through what an Offsite run does with it: derive a uniform and a CRaSh emulator,
plug an untouched adapter back in (logits must not move), plug in LoRA, save and load the emulator,
and decode with a KV cache. A family is *covered* when every check passes, *refused* when
emulator.blocks rejects it with UnsupportedArchitectureError, and *skipped* when no text-only tiny
instance can be built (encoder-decoder or multimodal classes, kernels this machine lacks).

    python -m bench.coverage              # prints the table, writes bench/results/coverage.json
    python -m bench.coverage llama gpt2   # only these families (does not write the JSON)
    python -m bench.coverage --markdown   # the docs/models.md tables from the JSON
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LAYERS = 4
VOCAB = 128
SEQ = 12
MAX_PARAMS = 3_000_000

# One tiny shape for every family; keys a config class does not know are not passed to it.
TINY: dict[str, object] = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    # BERT-style classes are causal LMs only as decoders (otherwise they attend both ways).
    "is_decoder": True,
    # Small enough that sliding and full attention differ over SEQ tokens.
    "sliding_window": 4,
    # GPT-2 / GPT-J / Bloom / MPT style names.
    "n_embd": 32,
    "n_layer": LAYERS,
    "n_layers": LAYERS,
    "n_head": 4,
    "n_heads": 4,
    "n_inner": 64,
    "n_positions": 64,
    "d_model": 32,
    "num_layers": LAYERS,
    "num_heads": 4,
    "ffn_dim": 64,
    "ffn_hidden_size": 64,
    "decoder_layers": LAYERS,
    "num_decoder_layers": LAYERS,
    "decoder_attention_heads": 4,
    "decoder_ffn_dim": 64,
    "rotary_dim": 4,
    # Mixture of experts: few small experts, the first block dense where the family has that rule.
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "moe_topk": 2,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "n_shared_experts": 1,
    "num_shared_experts": 1,
    "n_group": 1,
    "topk_group": 1,
    # Blocks 0-1 dense, 2-3 MoE: the CRaSh layout [0, 1, 1, 3] runs dense block 1 at position 2.
    "first_k_dense_replace": 2,
    # Multi-head latent attention (DeepSeek family).
    "kv_lora_rank": 16,
    "q_lora_rank": 16,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "qk_head_dim": 16,
    "v_head_dim": 8,
    "index_head_dim": 8,
    "index_n_heads": 2,
    # Sparse-attention indexers keep every key: a top-k below the length flips on rounding noise.
    "index_topk": 64,
    "num_nextn_predict_layers": 0,
    # Linear attention / state-space parts of hybrids.
    "linear_key_head_dim": 8,
    "linear_value_head_dim": 8,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "mamba_d_state": 8,
    "mamba_d_conv": 4,
    "mamba_expand": 2,
    "mamba_n_heads": 4,
    "mamba_d_head": 16,
    "state_size": 8,
    "conv_kernel": 4,
    "expand": 2,
}

_SSM = {"mamba_n_heads": 4, "mamba_d_head": 16, "mamba_d_state": 8, "mamba_chunk_size": 16}

# Per-family extras on top of TINY (fields whose defaults do not fit the tiny shape).
EXTRA: dict[str, dict[str, object]] = {
    # RWKV halves weights by position every `rescale_every` blocks at inference; keep it off.
    "rwkv": {"rescale_every": 0},
    # Hybrids whose block kinds are a pattern over the layers, not a count.
    "nemotron_h": {
        "layers_block_type": ["mamba", "attention", "moe", "mlp"],
        "ssm_state_size": 8,
        "mamba_num_heads": 4,
        "mamba_head_dim": 16,
        "n_groups": 1,
        "chunk_size": 16,
        "moe_shared_expert_intermediate_size": 32,
    },
    "jamba": {
        "attn_layer_period": 2,
        "attn_layer_offset": 1,
        "expert_layer_period": 2,
        "expert_layer_offset": 1,
    },
    "bamba": {**_SSM, "attn_layer_indices": [1, 3]},
    "granitemoehybrid": {**_SSM, "layer_types": ["mamba", "attention", "mamba", "attention"]},
    "falcon_h1": {**_SSM, "mamba_d_ssm": 64},
    "mamba2": {"num_heads": 4, "head_dim": 16, "n_groups": 1, "state_size": 8, "chunk_size": 16},
    "zamba2": {**_SSM, "layer_types": ["mamba", "hybrid", "mamba", "hybrid"]},
    "lfm2_moe": {"layer_types": ["conv", "full_attention", "conv", "full_attention"], "num_dense_layers": 1},
    # Fields the shared shape does not reach.
    "dbrx": {
        "attn_config": {"kv_n_heads": 2},
        "ffn_config": {"ffn_hidden_size": 64, "moe_num_experts": 4, "moe_top_k": 2},
    },
    "gpt_neo": {"attention_types": [[["global", "local"], LAYERS // 2]], "window_size": 4},
    "bailing_hybrid": {"layer_group_size": 2},
    "cpmant": {"dim_head": 8, "dim_ff": 64, "prompt_length": 4, "init_std": 0.02},
    "ctrl": {"dff": 64},
    "roc_bert": {
        "shape_vocab_size": 16,
        "shape_embed_dim": 8,
        "pronunciation_vocab_size": 16,
        "pronunciation_embed_dim": 8,
    },
    "dots3_note": {"num_key_value_heads": 4},
    "dots3_note_text": {"num_key_value_heads": 4},
    "gemma3n_text": {
        "intermediate_size": 64,
        "vocab_size_per_layer_input": VOCAB,
        "hidden_size_per_layer_input": 8,
        "num_kv_shared_layers": 1,
        "laurel_rank": 4,
        "activation_sparsity_pattern": [0.0] * LAYERS,
    },
    "gemma4_text": {"vocab_size_per_layer_input": VOCAB, "hidden_size_per_layer_input": 8},
    "gemma4_assistant": {"hidden_size_per_layer_input": 0},
    "kimi_linear": {
        "layer_types": ["linear_attention", "full_attention", "linear_attention", "full_attention"],
        "kv_lora_rank": 16,
        "linear_head_dim": 8,
        "linear_num_heads": 4,
        "num_experts_per_token": 2,
    },
    "longcat_flash": {
        "ffn_hidden_size": 64,
        "expert_ffn_hidden_size": 32,
        "zero_expert_num": 2,
        "moe_topk": 2,
    },
    "inkling_text": {
        "swa_num_attention_heads": 4,
        "swa_num_key_value_heads": 2,
        "swa_head_dim": 8,
        "sliding_window_size": 4,
        "moe_intermediate_size": 32,
        "n_shared_experts": 1,
    },
    "inkling2_text": {
        "unpadded_vocab_size": VOCAB,
        "swa_num_attention_heads": 4,
        "swa_num_key_value_heads": 2,
        "swa_head_dim": 8,
        "sliding_window_size": 4,
        "n_layers_per_attn_res_block": 2,
    },
    "inkling2_loop_text": {
        "unpadded_vocab_size": VOCAB,
        "swa_num_attention_heads": 4,
        "swa_num_key_value_heads": 2,
        "swa_head_dim": 8,
        "sliding_window_size": 4,
    },
    # Cross-attention blocks are skipped without images: keep one where LoRA is not checked.
    "mllama": {"cross_attention_layers": [1]},
    "zaya": {"num_experts_per_tok": 1, "router_hidden_size": 16},
    "xlstm": {"embedding_dim": 32, "num_heads": 4, "chunk_size": 4, "ffn_round_up_to_multiple_of": 8},
}

# Families that cannot be built as a tiny text-only causal LM here, and why.
_MULTIMODAL = "multimodal (vision/audio towers): no text-only causal LM to build"
SKIP: dict[str, str] = {
    "gemma3": f"{_MULTIMODAL}; its text model is gemma3_text",
    "gemma3n": f"{_MULTIMODAL}; its text model is gemma3n_text",
    "gemma4": f"{_MULTIMODAL}; its text model is gemma4_text",
    "gemma4_unified": f"{_MULTIMODAL}; its text model is gemma4_unified_text",
    "git": _MULTIMODAL,
    "got_ocr2": _MULTIMODAL,
    "phi4_multimodal": _MULTIMODAL,
    "moss_transcribe_diarize": _MULTIMODAL,
    "dots3_note": f"{_MULTIMODAL}; its text model is dots3_note_text",
    "musicgen": "text-to-audio: a codebook decoder conditioned on a text encoder",
    "musicgen_melody": "text-to-audio: a codebook decoder conditioned on a text encoder",
    "blt": "byte latent transformer: local byte encoder/decoder around a global transformer, hash embeddings",
    "gemma4_unified_assistant": "draft model: runs on the KV states its target model shares with it",
    "xmod": "needs a language adapter chosen with set_default_language() before any forward",
}


def _known_keys(config) -> set[str]:
    return set(config.to_dict()) | set(getattr(config, "attribute_map", {}))


def tiny_config(family: str):
    """A small config for a model type (TINY shape plus the family's EXTRA fields)."""
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[family]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default = cls()
    extra = EXTRA.get(family, {})
    kwargs = _tiny_fields(default, extra)
    text = getattr(default, "text_config", None)
    if text is not None and hasattr(text, "to_dict"):
        kwargs["text_config"] = _tiny_fields(text, extra)
        kwargs.update({k: v for k, v in extra.items() if k not in kwargs["text_config"]})
    else:
        kwargs.update(extra)
    return cls(**kwargs)


def _tiny_fields(config, extra: dict) -> dict:
    known = _known_keys(config)
    fields = {k: v for k, v in {**TINY, **extra}.items() if k in known}
    if "kv_lora_rank" in fields:  # latent attention expands keys and values per query head
        fields["num_key_value_heads"] = TINY["num_attention_heads"]
    return fields


def tiny_model(family: str, seed: int = 0, check_size: bool = True) -> nn.Module:
    """A tiny randomly initialised causal LM of a model type, in eval mode (float32)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if check_size:  # on the meta device first: a default left large would take gigabytes
            with torch.device("meta"):
                size = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
            if size > MAX_PARAMS:
                raise ValueError(f"the tiny {family} config still has {size:,} parameters; add EXTRA fields")
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def families() -> list[str]:
    """Every model type in transformers' causal-LM mapping, sorted."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


# --- the checks (tests/emulator/test_families.py runs the same ones, one test each) -------------

CHECKS = ("plug-in uniform", "plug-in crash", "lora", "config per position", "save/load", "cached decoding")


def token_batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed (4, SEQ) batch of ids with one right-padded row, and its attention mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (4, SEQ), generator=g)
    mask = torch.ones_like(ids)
    mask[3, SEQ - 4 :] = 0
    ids[3, SEQ - 4 :] = 0
    return ids, mask


def emulator_options():
    """The two layouts every family is checked with: uniform drops blocks, CRaSh shares them."""
    from emulator.derive import EmulatorOptions

    # Uniform runs blocks [0, 1, 3] (position 2 runs block 3) and CRaSh [0, 1, 1, 3] (block 1
    # twice): per-layer types shift in both.
    return {
        "uniform": EmulatorOptions("uniform", first=1, last=1, keep=1),
        "crash": EmulatorOptions("crash", first=1, last=1, keep=1),
    }


def logits(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Full-sequence logits without a cache."""
    ids, mask = batch
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits


class Family:
    """A tiny model of one family with its uniform and CRaSh emulators (built once, not modified)."""

    def __init__(self, family: str):
        from emulator.derive import derive_emulator

        self.family = family
        self.full = tiny_model(family, check_size=False)  # sized when first tried (try_family)
        self.batch = token_batch()
        self.emulators = {
            name: derive_emulator(self.full, opts, calibration=self.batch)
            for name, opts in emulator_options().items()
        }
        self.reference = logits(self.full, self.batch)
        self.scratch: nn.Module | None = None


def check_plug_in(fam: Family, method: str) -> None:
    """An untouched adapter plugged back into the full model leaves its logits bit-identical."""
    from emulator.plugin import plug_in

    if fam.scratch is None:  # one copy serves both layouts: untouched adapters leave it equal to full
        fam.scratch = copy.deepcopy(fam.full)
    plugged = plug_in(fam.scratch, fam.emulators[method].adapter_state_dict(), inplace=True)
    assert torch.equal(logits(plugged, fam.batch), fam.reference), "logits moved"


def _tuned_lora(emu, positions: list[int], rank: int = 2):
    from emulator.plugin import add_lora

    peft_emu = add_lora(copy.deepcopy(emu.model), positions, rank)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in peft_emu.named_parameters():
            if "lora_B" in name:  # as if tuned: B starts at zero, so LoRA is a no-op until trained
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return peft_emu.eval()


def check_lora(fam: Family, method: str = "uniform", rank: int = 2) -> None:
    """LoRA tuned on the emulator lands on the same blocks of the full model and merges exactly.

    On the last adapter block only (it sits at another position than its index), to keep the
    per-family cost down.
    """
    from emulator.plugin import lora_state, plug_in_lora

    emu = fam.emulators[method]
    position = emu.manifest.adapter_positions[-1]
    peft_emu = _tuned_lora(emu, [position], rank)
    state = lora_state(peft_emu, emu.manifest.layout)
    assert {int(k.split(".")[1]) for k in state} == {emu.manifest.layout[position]}
    plugged = plug_in_lora(fam.full, state, rank).eval()
    landed = lora_state(plugged)
    assert landed.keys() == state.keys() and all(torch.equal(v, landed[k]) for k, v in state.items()), (
        "LoRA weights moved"
    )
    tuned = logits(plugged, fam.batch)
    assert not torch.allclose(tuned, fam.reference), "plugged-in LoRA changed nothing"
    merged = plugged.merge_and_unload().eval()  # in place: plugged is a copy made for this check
    assert torch.allclose(logits(merged, fam.batch), tuned, atol=1e-5, rtol=1e-4), "merged != unmerged"


def check_config_per_position(fam: Family, method: str = "crash") -> str | None:
    """A fresh model built from the emulator's own config, given its weights, computes the same logits.

    This holds only if the config says what each position runs (sliding or full attention, ...).
    Returns a note when the family's blocks cannot be rebuilt from a re-indexed config.
    """
    emu = fam.emulators[method]
    torch.manual_seed(0)
    fresh = type(emu.model)._from_config(copy.deepcopy(emu.model.config), dtype=torch.float32).eval()
    expected = {k: tuple(v.shape) for k, v in emu.model.state_dict().items()}
    if {k: tuple(v.shape) for k, v in fresh.state_dict().items()} != expected:
        return "blocks follow an index rule the config cannot re-index (rebuilt from the full config)"
    differ = _index_constants(fresh, emu.model)
    if differ:
        return f"blocks hold constants computed from their index at init ({', '.join(differ)})"
    fresh.load_state_dict(emu.model.state_dict())
    fresh.tie_weights()
    assert torch.allclose(logits(fresh, fam.batch), logits(emu.model, fam.batch), atol=1e-6), (
        "the emulator's config does not describe what its positions run"
    )
    return None


def _index_constants(a: nn.Module, b: nn.Module) -> list[str]:
    """Plain numeric attributes (not weights, not layer_idx) that differ between two models' blocks."""
    from emulator.blocks import get_blocks

    out = set()
    for block_a, block_b in zip(get_blocks(a), get_blocks(b), strict=True):
        modules_b = dict(block_b.named_modules())
        for name, ma in block_a.named_modules():
            for attr, value in vars(ma).items():
                plain = isinstance(value, (int, float)) and not attr.startswith("_") and attr != "layer_idx"
                if plain and name in modules_b and vars(modules_b[name]).get(attr) != value:
                    out.add(f"{name}.{attr}" if name else attr)
    return sorted(out)


def check_save_load(fam: Family, method: str = "crash") -> None:
    """A saved and reloaded emulator computes the same logits, and still shares its repeated blocks."""
    from emulator.emulator import load_emulator

    emu = fam.emulators[method]
    with tempfile.TemporaryDirectory() as tmp:
        emu.save(tmp)
        loaded = load_emulator(tmp)
    assert loaded.manifest.layout == emu.manifest.layout
    assert torch.equal(logits(loaded.model, fam.batch), logits(emu.model, fam.batch)), "logits changed"
    stored = sum(p.numel() for p in loaded.model.parameters())
    assert stored == sum(p.numel() for p in emu.model.parameters()), "shared blocks were untied"


def _decode(model: nn.Module, ids: torch.Tensor, new_tokens: int, use_cache: bool):
    with torch.no_grad():
        return model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=use_cache,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )


def _decoding_mismatch(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> str | None:
    cached, recomputed = (_decode(model, ids, new_tokens, use_cache) for use_cache in (True, False))
    if not torch.equal(cached.sequences, recomputed.sequences):
        return "cached decoding chose other tokens"
    for a, b in zip(cached.logits, recomputed.logits, strict=True):
        if not torch.allclose(a, b, atol=1e-4, rtol=1e-4):
            return "cached logits differ from recomputation"
    return None


def check_cached_decoding(fam: Family, method: str = "crash", new_tokens: int = 4) -> str | None:
    """Greedy decoding with a KV cache gives the tokens and logits of decoding without one.

    Returns a note when the full model itself fails this (then it says nothing about the emulator).
    """
    ids = fam.batch[0][:2, :6]
    problem = _decoding_mismatch(fam.emulators[method].model, ids, new_tokens)
    if problem is None:
        return None
    if _decoding_mismatch(fam.full, ids, new_tokens):
        return "the full model's own cached decoding differs from recomputation, so this says nothing"
    raise AssertionError(problem)


def run_checks(fam: Family) -> list[str]:
    """Run every check on one family; returns notes (checks that did not apply). Raises on failure."""
    notes = []
    for name, check in (
        ("plug-in uniform", lambda: check_plug_in(fam, "uniform")),
        ("plug-in crash", lambda: check_plug_in(fam, "crash")),
        ("lora", lambda: check_lora(fam)),
        ("config per position", lambda: check_config_per_position(fam)),
        ("save/load", lambda: check_save_load(fam)),
        ("cached decoding", lambda: check_cached_decoding(fam)),
    ):
        try:
            note = check()
        except Exception as e:
            raise CheckFailed(f"{name}: {type(e).__name__}: {_short(e)}") from e
        if note:
            notes.append(f"{name}: {note}")
    return notes


class CheckFailed(AssertionError):
    """One of the coverage checks failed for a family."""


def _short(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def try_family(family: str) -> dict:
    """Build one family and run the checks: a row with status covered / refused / skipped / failed."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from emulator.blocks import UnsupportedArchitectureError, paths_for

    row = {"family": family, "class": MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(family, "")}
    start = time.perf_counter()
    if family in SKIP:
        return {**row, "status": "skipped", "reason": SKIP[family]}
    try:
        fam_model = tiny_model(family)
        fam_model(input_ids=token_batch()[0][:1])
    except Exception as e:
        return {**row, "status": "skipped", "reason": f"no tiny text-only instance: {_short(e)}"}
    try:
        paths = paths_for(fam_model)
    except UnsupportedArchitectureError as e:
        return {**row, "status": "refused", "reason": str(e)}
    row["blocks"] = paths.blocks
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            notes = run_checks(Family(family))
    except Exception as e:
        if isinstance(e.__cause__ or e, UnsupportedArchitectureError):
            return {**row, "status": "refused", "reason": str(e.__cause__ or e)}
        return {**row, "status": "failed", "reason": _short(e, 300), "seconds": _since(start)}
    return {**row, "status": "covered", "reason": "; ".join(notes), "seconds": _since(start)}


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 2)


def covered_families(path: Path = RESULTS / "coverage.json") -> list[str]:
    """Families the committed coverage run found covered."""
    rows = json.loads(path.read_text())["families"]
    return [r["family"] for r in rows if r["status"] == "covered"]


def refused_families(path: Path = RESULTS / "coverage.json") -> list[str]:
    """Families the committed coverage run found refused by emulator.blocks."""
    rows = json.loads(path.read_text())["families"]
    return [r["family"] for r in rows if r["status"] == "refused"]


def markdown(data: dict) -> str:
    """The docs/models.md coverage tables from a coverage.json."""
    rows = data["families"]
    covered = [r["family"] for r in rows if r["status"] == "covered"]
    lines = [
        f"Covered ({len(covered)} of {len(rows)} model types, transformers {data['versions']['transformers']}):",
        "",
        ", ".join(f"`{f}`" for f in covered) + ".",
        "",
    ]
    for status, title in (("refused", "Refused"), ("skipped", "Not built (no tiny text-only instance)")):
        picked = [r for r in rows if r["status"] == status]
        if picked:
            lines += [f"{title}:", "", "| model type | reason |", "|---|---|"]
            lines += [f"| `{r['family']}` | {_reason(r['reason'])} |" for r in picked]
            lines.append("")
    return "\n".join(lines)


def _reason(text: str) -> str:
    # The error names the model type again, and "not built" rows say "no tiny instance": the table does.
    text = text.split(" is not supported", 1)[-1].lstrip(":").strip()
    text = text.removeprefix("no tiny text-only instance: ")
    if text.startswith("for this layout:"):
        text = "layouts that break its pattern:" + text.removeprefix("for this layout:")
    return text.replace("|", "\\|")


def main(argv: list[str]) -> int:
    """Try the named families (default: all), print the table, write the JSON for a full run."""
    import transformers

    if argv == ["--markdown"]:
        print(markdown(json.loads((RESULTS / "coverage.json").read_text())))
        return 0
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    names = argv or families()
    rows = []
    for name in names:
        row = try_family(name)
        rows.append(row)
        print(f"{name:28s} {row['status']:8s} {row.get('reason', '')[:150]}", flush=True)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("covered", "refused", "skipped", "failed")}
    print(f"\n{counts['covered']}/{len(rows)} covered; " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    if not argv:
        RESULTS.mkdir(exist_ok=True)
        data = {
            "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
            "shape": {"layers": LAYERS, "vocab": VOCAB, "hidden": TINY["hidden_size"], "seq": SEQ},
            "summary": {"tried": len(rows), **counts},
            "families": rows,
        }
        (RESULTS / "coverage.json").write_text(json.dumps(data, indent=2) + "\n")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
