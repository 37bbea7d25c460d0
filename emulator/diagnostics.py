"""Transfer diagnostics that need no tuning: how alike the adapter's task gradient is through the
emulator and through the full model. A stand-in whose middle bends the gradient away from the full
model's teaches its adapter something the full model cannot use.
"""

from __future__ import annotations

import random

import torch
from torch import nn

from emulator.blocks import get_blocks
from emulator.data import Example
from emulator.train import collate, encode, supervised_loss


def _block_grads(model: nn.Module, blocks: dict[str, nn.Module], batch: dict) -> dict[str, torch.Tensor]:
    """Gradient of the batch's task loss for each parameter of `blocks` ({key prefix: block})."""
    named = {f"{k}.{n}": p for k, b in blocks.items() for n, p in b.named_parameters()}
    was = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in named.values():
        p.requires_grad_(True)
    try:
        grads = torch.autograd.grad(supervised_loss(model, batch), list(named.values()))
    finally:
        for p in model.parameters():
            p.requires_grad_(was[id(p)])
    return {k: g.detach().flatten() for k, g in zip(named, grads, strict=True)}


def gradient_cosine(
    full: nn.Module, emulator, tokenizer, examples: list[Example], batch_size: int = 16, seed: int = 0
) -> float:
    """Cosine (−1..1) between the adapter blocks' task gradient through the emulator and through the full
    model, on one seeded batch of `examples`, before any tuning."""
    rows = encode(tokenizer, examples)
    batch = collate(random.Random(seed).sample(rows, min(batch_size, len(rows))), tokenizer.pad_token_id or 0)
    emu_blocks = {f"blocks.{b}": m for b, m in emulator.adapter_modules().items()}
    full_stack = get_blocks(full)
    full_blocks = {key: full_stack[int(key.split(".")[1])] for key in emu_blocks}
    g_emu = _block_grads(emulator.model, emu_blocks, batch)
    g_full = _block_grads(full, full_blocks, batch)
    a = torch.cat([g_emu[k] for k in sorted(g_emu)]).double()  # float64: the sums run over millions of terms
    b = torch.cat([g_full[k] for k in sorted(g_emu)]).double()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))
