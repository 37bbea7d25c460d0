"""The emulator recipe chosen from the full model when a run does not set it (docs/emulators.md#the-default-recipe).

Measured on wn-category: the 6.9M zoo:base tunes best at lr 1e-3 with full CRaSh sharing; the 135M
SmolLM2 at lr 3e-4 (1e-3 lets the emulator learn the task on its own, so plug-in gains little) and
without sharing (repeated blocks push its hidden state off course). Only those two sizes were
measured, so PRETRAINED_PARAMS is a boundary between them, not an optimum. Both keep about a third of
the middle, as Offsite-Tuning and CRaSh do.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from emulator.blocks import get_blocks

PRETRAINED_PARAMS = 50_000_000
KEEP_FRACTION = 1 / 3
CONTROL_LR = 1e-3  # a control model is trained from scratch, whatever the full model's size


@dataclass(frozen=True)
class Recipe:
    """Adapter learning rate, CRaSh sharing mode and middle blocks kept."""

    lr: float
    share: str
    keep: int


def recipe_for(n_params: int, n_blocks: int, first: int, last: int) -> Recipe:
    """The default recipe for a full model of `n_params` parameters and `n_blocks` blocks (first+last adapter)."""
    middle = max(n_blocks - first - last, 1)
    keep = max(1, min(middle, round(middle * KEEP_FRACTION)))
    if n_params >= PRETRAINED_PARAMS:
        return Recipe(lr=3e-4, share="none", keep=keep)
    return Recipe(lr=1e-3, share="full", keep=keep)


def recipe_for_model(model: nn.Module, first: int, last: int, find_blocks: bool = True) -> Recipe:
    """The default recipe for `model`, from its parameter count and blocks.

    `find_blocks=False` skips finding the blocks (a control stand-in removes none; its keep is moot).
    """
    n_blocks = len(get_blocks(model)) if find_blocks else first + last + 1
    return recipe_for(sum(p.numel() for p in model.parameters()), n_blocks, first, last)


def resolve_recipe(
    model: nn.Module,
    first: int,
    last: int,
    lr: float | None = None,
    share: str | None = None,
    keep: int | None = None,
    find_blocks: bool = True,
) -> tuple[Recipe, str]:
    """The recipe a run uses, and a line that says it: each of lr, share and keep as given, or, when
    None / 'auto' / 0, the model's default (`recipe_for_model`). Every entry point resolves here."""
    auto = recipe_for_model(model, first, last, find_blocks)
    given = {"lr": lr, "share": None if share == "auto" else share, "keep": keep or None}
    recipe = Recipe(**{k: auto.__dict__[k] if v is None else v for k, v in given.items()})
    n = sum(p.numel() for p in model.parameters())
    size = "≥" if n >= PRETRAINED_PARAMS else "<"
    parts = [f"{k} {getattr(recipe, k)}" + (" (by size)" if given[k] is None else "") for k in given]
    return (
        recipe,
        f"recipe: {', '.join(parts)} — {n / 1e6:.1f}M parameters, {size} {PRETRAINED_PARAMS / 1e6:.0f}M",
    )
