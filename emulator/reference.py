"""The centralised reference: a copy of the full model with only chosen blocks (or everything) trainable."""

from __future__ import annotations

import copy

from torch import nn

from emulator.blocks import get_blocks


def trainable_copy(full: nn.Module, blocks: list[int] | None = None) -> tuple[nn.Module, list[nn.Parameter]]:
    """A deep copy of `full` and its trainable parameters: those of `blocks`, or all when None."""
    ref = copy.deepcopy(full)
    if blocks is None:
        params = list(ref.parameters())
    else:
        for p in ref.parameters():
            p.requires_grad_(False)
        stack = get_blocks(ref)
        params = [p for b in blocks for p in stack[b].parameters()]
    for p in params:
        p.requires_grad_(True)
    return ref, params
