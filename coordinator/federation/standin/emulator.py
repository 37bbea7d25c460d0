"""The emulator stand-in kind: a CRaSh or uniform emulator of the full model, tuned through its adapter."""

from __future__ import annotations

import copy

import torch
from torch import nn

from coordinator.config import FederationConfig
from emulator.blocks import get_blocks
from emulator.data import Example
from emulator.derive import EmulatorOptions, derive_emulator
from emulator.emulator import Emulator
from emulator.evaluate import accuracy
from emulator.plugin import add_lora, attach_adapter, lora_state, plug_in, plug_in_lora
from emulator.zoo import public_texts


def build(cfg: FederationConfig, full: nn.Module, tokenizer) -> Emulator:
    """Derive the run's emulator of `full` (CKA calibration for CRaSh; distilled on self-sampled text if
    distill-steps > 0)."""
    from emulator.distill import distill, distill_corpus, text_rows

    options = EmulatorOptions(cfg.method, cfg.adapter_first, cfg.adapter_last, cfg.keep, cfg.placement,
                              cfg.clustering, cfg.share)  # fmt: skip
    calib = text_rows(tokenizer, public_texts(cfg.calibration_texts)) if cfg.method == "crash" else None
    emu = derive_emulator(full, options, calibration=calib, tokenizer=tokenizer)
    if cfg.distill_steps:
        # Text sampled from the full model itself: never task data, no outside corpus.
        rows, held = distill_corpus(full, tokenizer, "self", seed=cfg.seed)
        distill(emu, full, *rows, steps=cfg.distill_steps, seed=cfg.seed, heldout=held)
    return emu


def initial_adapter(cfg: FederationConfig, full: nn.Module, emu: Emulator) -> dict[str, torch.Tensor]:
    """Round-0 global adapter: the full model's own adapter blocks, or a seeded fresh LoRA (B = 0)."""
    if cfg.lora_rank == 0:
        blocks = get_blocks(full)
        return {
            f"blocks.{b}.{name}": t.detach().float().clone()
            for b in emu.manifest.adapter_blocks
            for name, t in blocks[b].state_dict().items()
        }
    torch.manual_seed(cfg.seed)
    peft_model = add_lora(copy.deepcopy(emu.model), emu.manifest.adapter_positions, cfg.lora_rank)
    return {k: v.float() for k, v in lora_state(peft_model, emu.manifest.layout).items()}


def emulator_with(emu: Emulator, adapter: dict[str, torch.Tensor], lora_rank: int) -> nn.Module:
    """A copy of the emulator's model carrying the adapter."""
    return attach_adapter(Emulator(copy.deepcopy(emu.model), emu.manifest, emu.tokenizer), adapter, lora_rank)


def plugged(full: nn.Module, adapter: dict[str, torch.Tensor], lora_rank: int) -> nn.Module:
    """A copy of the full model with the adapter plugged in at its block indices."""
    return plug_in(full, adapter) if lora_rank == 0 else plug_in_lora(full, adapter, lora_rank)


def evaluate(
    full: nn.Module, emu: Emulator, tok, adapter: dict, lora_rank: int, eval_set: list[Example]
) -> dict[str, float]:
    """Plug-in and emulator-FT accuracy (%) of the adapter on the server's eval set."""
    return {
        "plug-in": accuracy(plugged(full, adapter, lora_rank), tok, eval_set),
        "emulator FT": accuracy(emulator_with(emu, adapter, lora_rank), tok, eval_set),
    }
