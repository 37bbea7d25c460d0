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
    return LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else 2 * rank,
        lora_dropout=dropout,
        target_modules=list(targets or paths.lora_targets),
        layers_to_transform=sorted(positions),
        layers_pattern=paths.blocks.rsplit(".", 1)[-1],
        bias="none",
        task_type="CAUSAL_LM",
    )


def add_lora(model: nn.Module, positions: list[int], rank: int, **kwargs) -> PeftModel:
    """Wrap `model` with LoRA on the given block positions; only LoRA weights are trainable."""
    return get_peft_model(model, lora_config(model, positions, rank, **kwargs))


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
    set_peft_model_state_dict(peft_model, remapped)


def attach_adapter(emulator, adapter: dict[str, torch.Tensor], lora_rank: int) -> nn.Module:
    """The emulator's model (modified in place) carrying an adapter: whole blocks, or LoRA when lora_rank > 0."""
    if lora_rank == 0:
        emulator.load_adapter_state_dict(adapter)
        return emulator.model
    model = add_lora(emulator.model, emulator.manifest.adapter_positions, lora_rank)
    load_lora_state(model, adapter, emulator.manifest.layout)
    return model


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
