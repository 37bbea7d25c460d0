"""Which causal-LM families the emulator supports: build a tiny random instance of each, run the checks.

Every model type in transformers' causal-LM mapping is built from a small config (random weights,
no hub) and put through what an Offsite run does with it: derive a uniform and a CRaSh emulator,
plug an untouched adapter back in (logits must not move), plug in LoRA, save and load the emulator,
and decode with a KV cache. A family is *covered* when every check passes, *refused* when
emulator.blocks rejects it with UnsupportedArchitectureError, and *skipped* when no text-only tiny
instance can be built (encoder-decoder or multimodal classes, kernels this machine lacks).

    python -m bench.coverage              # prints the table, writes bench/results/coverage.json
    python -m bench.coverage llama gpt2   # only these families (does not write the JSON)
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LAYERS = 6
VOCAB = 128
SEQ = 12

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
    "first_k_dense_replace": 1,
    # Multi-head latent attention (DeepSeek family).
    "kv_lora_rank": 16,
    "q_lora_rank": 16,
    "qk_rope_head_dim": 4,
    "qk_nope_head_dim": 4,
    "qk_head_dim": 8,
    "v_head_dim": 8,
    "index_head_dim": 8,
    "index_n_heads": 2,
    "index_topk": 4,
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

# Per-family extras on top of TINY (fields whose defaults do not fit the tiny shape).
EXTRA: dict[str, dict[str, object]] = {}

# Families that cannot be built as a tiny text-only causal LM here, and why.
SKIP: dict[str, str] = {}


def _known_keys(config) -> set[str]:
    return set(config.to_dict()) | set(getattr(config, "attribute_map", {}))


def tiny_config(family: str):
    """A small config for a model type (TINY shape plus the family's EXTRA fields)."""
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[family]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default = cls()
    kwargs = {k: v for k, v in TINY.items() if k in _known_keys(default)}
    for sub in ("text_config",):
        sub_default = getattr(default, sub, None)
        if sub_default is not None and hasattr(sub_default, "to_dict"):
            kwargs[sub] = {k: v for k, v in TINY.items() if k in _known_keys(sub_default)}
    kwargs.update(EXTRA.get(family, {}))
    return cls(**kwargs)


def tiny_model(family: str, seed: int = 0) -> nn.Module:
    """A tiny randomly initialised causal LM of a model type, in eval mode (float32)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(family)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def families() -> list[str]:
    """Every model type in transformers' causal-LM mapping, sorted."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
