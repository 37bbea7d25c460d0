"""Plug-in: write tuned adapter blocks (whole, or LoRA on them) back into the full model.

Adapters are keyed by full-model block index and parameter name (`blocks.{i}.{param}`), never by
their position in a parameter list, so an adapter tuned on any emulator layout lands where it
came from.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from emulator.blocks import get_blocks, paths_for, unwrap
from emulator.emulator import load_block_state

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


def adapter_blocks_of(state: dict[str, torch.Tensor]) -> list[int]:
    """Full-model block indices named by an adapter state dict's `blocks.{i}.` keys."""
    out = set()
    for key in state:
        m = _BLOCK_KEY.match(key)
        if not m:
            raise KeyError(f"adapter key {key!r} is not of the form 'blocks.<index>.<param>'")
        out.add(int(m.group(1)))
    return sorted(out)


def plug_in(full: nn.Module, adapter: dict[str, torch.Tensor], inplace: bool = False) -> nn.Module:
    """Return the full model with whole adapter blocks written into their block indices."""
    model = full if inplace else copy.deepcopy(full)
    blocks = get_blocks(model)
    indices = adapter_blocks_of(adapter)
    bad = [i for i in indices if i >= len(blocks)]
    if bad:
        raise IndexError(f"adapter names blocks {bad}, but the model has only {len(blocks)} blocks")
    load_block_state({i: blocks[i] for i in indices}, adapter, what="plug-in")
    return model


# --- LoRA on adapter blocks ------------------------------------------------------------------


def lora_config(
    model: nn.Module,
    positions: list[int],
    rank: int,
    alpha: float | None = None,
    dropout: float = 0.0,
    targets: list[str] | None = None,
) -> LoraConfig:
    """A peft LoraConfig that puts rank-`rank` LoRA on the given block positions only."""
    paths = paths_for(model)
    names = set(targets or paths.lora_targets) - _remapped_by_peft(model)
    blocks = get_blocks(model)
    # Full module names, so only these positions of this block list match (not a second stack
    # also called "layers", not every layer).
    modules = sorted(
        f"{paths.blocks}.{p}.{name}"
        for p in positions
        for name, _ in blocks[p].named_modules()
        if name.rsplit(".", 1)[-1] in names
    )
    if not modules:
        raise ValueError(f"no LoRA targets named {sorted(names)} in block positions {sorted(positions)}")
    return LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else 2 * rank,
        lora_dropout=dropout,
        target_modules=modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def _remapped_by_peft(model: nn.Module) -> set[str]:
    """Layer names peft turns into fused-expert targets on every layer (its v4-to-v5 MoE adapter conversion)."""
    try:
        from peft.utils import transformers_weight_conversion as conv

        mt = unwrap(model).config.model_type
        base = conv._MODEL_TO_CONVERSION_PATTERN.get(mt)
        if conv.get_checkpoint_conversion_mapping(mt) is None or not conv._MOE_FUSED_TARGETS.get(base):
            return set()
        return set(conv._MOE_TARGET_MODULE_MAPPING.get(base) or {})
    except (ImportError, AttributeError):
        return set()


def add_lora(model: nn.Module, positions: list[int], rank: int, **kwargs) -> PeftModel:
    """Wrap `model` with LoRA on the given block positions; only LoRA weights are trainable."""
    peft_model = get_peft_model(model, lora_config(model, positions, rank, **kwargs))
    pattern, allowed = _position_key_pattern(peft_model), set(positions)
    stray = [k for k in get_peft_model_state_dict(peft_model) if not _in_positions(pattern, k, allowed)]
    if stray:
        raise ValueError(f"peft placed LoRA outside block positions {sorted(allowed)}: {stray[:3]}")
    return peft_model


def _in_positions(pattern: re.Pattern, key: str, allowed: set[int]) -> bool:
    m = pattern.match(key)
    return bool(m) and int(m.group(2)) in allowed


def is_lora_a(name: str) -> bool:
    """Whether a parameter or adapter key is a LoRA A factor (frozen under FFA-LoRA)."""
    return "lora_A" in name


def trained_adapter_names(names: Iterable[str], lora_rank: int, train_lora_a: bool) -> list[str]:
    """The adapter tensors a site trains and sends, sorted: all of them, or LoRA B only under FFA-LoRA."""
    if lora_rank and not train_lora_a:
        return sorted(k for k in names if not is_lora_a(k))
    return sorted(names)


def lora_trainable(model: nn.Module, train_a: bool) -> list[nn.Parameter]:
    """The LoRA model's trainable parameters, after freezing every A when `train_a` is False (FFA-LoRA)."""
    if not train_a:
        for name, p in model.named_parameters():
            if is_lora_a(name):
                p.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def _position_key_pattern(model: nn.Module) -> re.Pattern:
    return re.compile(rf"^(.*\b{re.escape(paths_for(model).blocks)})\.(\d+)\.(.+)$")


def lora_state(peft_model: PeftModel, layout: list[int] | None = None) -> dict[str, torch.Tensor]:
    """LoRA weights keyed `blocks.{full_index}.{module}.lora_X.weight` (layout maps position→index)."""
    pattern = _position_key_pattern(peft_model)
    out = {}
    for key, value in get_peft_model_state_dict(peft_model).items():
        m = pattern.match(key)
        if not m:
            raise KeyError(f"LoRA key {key!r} is not inside a decoder block")
        pos = int(m.group(2))
        out[f"blocks.{layout[pos] if layout else pos}.{m.group(3)}"] = value.detach().clone()
    return out


def load_lora_state(
    peft_model: PeftModel, state: dict[str, torch.Tensor], layout: list[int] | None = None
) -> None:
    """Load `blocks.{i}.…` LoRA weights into a peft model whose block p runs full block layout[p]."""
    prefix = f"base_model.model.{paths_for(peft_model).blocks}"
    position_of = {b: p for p, b in enumerate(layout)} if layout else None
    remapped = {}
    for key, value in state.items():
        m = _BLOCK_KEY.match(key)
        if not m:
            raise KeyError(f"LoRA key {key!r} is not of the form 'blocks.<index>.<param>'")
        idx = int(m.group(1))
        pos = position_of[idx] if position_of else idx
        remapped[f"{prefix}.{pos}.{m.group(2)}"] = value
    expected = set(get_peft_model_state_dict(peft_model))
    if set(remapped) != expected:
        missing, extra = sorted(expected - set(remapped)), sorted(set(remapped) - expected)
        raise KeyError(f"LoRA keys do not match the model (missing {missing[:3]}, unexpected {extra[:3]})")
    _copy_lora(peft_model, remapped)


_LORA_PART = re.compile(r"\.(lora_[A-Za-z_]+)\.")


def _copy_lora(peft_model: PeftModel, state: dict[str, torch.Tensor]) -> None:
    """Write LoRA tensors into their parameters by name.

    Not set_peft_model_state_dict: for MoE families it first renames keys by transformers' v5
    checkpoint conversion, which can garble them (shared_experts..gate_proj) and drop them silently.
    """
    params = dict(peft_model.named_parameters())
    adapter = peft_model.active_adapter
    names = {key: _LORA_PART.sub(rf".\1.{adapter}.", key, count=1) for key in state}
    if not all(n in params for n in names.values()):
        set_peft_model_state_dict(peft_model, state)
        return
    with torch.no_grad():
        for key, name in names.items():
            params[name].copy_(state[key].to(params[name].dtype))


def attach_adapter(emulator, adapter: dict[str, torch.Tensor], lora_rank: int) -> nn.Module:
    """The emulator's model (modified in place) carrying an adapter: whole blocks, or LoRA when lora_rank > 0."""
    if lora_rank == 0:
        emulator.load_adapter_state_dict(adapter)
        return emulator.model
    model = add_lora(emulator.model, emulator.manifest.adapter_positions, lora_rank)
    load_lora_state(model, adapter, emulator.manifest.layout)
    return model


def tunable_adapter(emulator, lora_rank: int) -> tuple[nn.Module, list[nn.Parameter]]:
    """The emulator's model to tune and its trainable parameters: the whole adapter blocks, or LoRA of
    `lora_rank` on them (the model is then a peft wrapper of `emulator.model`)."""
    if lora_rank == 0:
        return emulator.model, emulator.freeze_all_but_adapter()
    model = add_lora(emulator.model, emulator.manifest.adapter_positions, lora_rank)
    return model, [p for p in model.parameters() if p.requires_grad]


def plug_in_tuned(full: nn.Module, emulator, model: nn.Module, lora_rank: int) -> nn.Module:
    """A copy of `full` carrying the adapter tuned in `model` (from `tunable_adapter`)."""
    if lora_rank == 0:
        return plug_in(full, emulator.adapter_state_dict())
    return plug_in_lora(full, lora_state(model, emulator.manifest.layout), lora_rank)


def plug_in_lora(full: nn.Module, state: dict[str, torch.Tensor], rank: int, **kwargs) -> PeftModel:
    """Return a peft model: a copy of `full` with the LoRA adapter placed at its block indices."""
    model = add_lora(copy.deepcopy(unwrap(full)), adapter_blocks_of(state), rank, **kwargs)
    load_lora_state(model, state)
    return model


def export_checkpoint(model: nn.Module, out: str | Path, tokenizer=None, as_adapter: bool = False) -> Path:
    """Save as a Hugging Face checkpoint (LoRA merged in) or, with as_adapter, as a peft adapter."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model, PeftModel):
        if as_adapter:
            model.save_pretrained(out)
        else:
            copy.deepcopy(model).merge_and_unload().save_pretrained(out)
    else:
        if as_adapter:
            raise ValueError("as_adapter needs a LoRA (peft) model; whole-block plug-in exports a checkpoint")
        model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out
