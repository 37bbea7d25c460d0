"""Derive an emulator from a full model: the uniform (Offsite-Tuning) rule or CRaSh (default)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from emulator.blocks import model_type, num_blocks
from emulator.crash import (
    adjacent_clusters,
    block_features,
    cka_matrix,
    representative,
    shared_layout,
    spread_pick,
    uniform_keep,
)
from emulator.emulator import Emulator, Manifest, assemble, state_dict_hash

# "full" is the identity stand-in: every block, all of them adapter (the FlowerTune-style baseline).
METHODS = ("uniform", "crash", "full")
PLACEMENTS = ("edges", "spread")


@dataclass(frozen=True)
class EmulatorOptions:
    """How to derive an emulator.

    first/last: adapter blocks at the bottom/top (placement 'edges'); keep: blocks stored for the
    compressed middle (uniform: kept blocks; crash: clusters). With placement 'spread' (crash only)
    all L blocks are clustered into first+keep+last clusters and first+last representatives,
    spread over depth, become the adapter.
    """

    method: str = "crash"
    first: int = 2
    last: int = 2
    keep: int = 4
    placement: str = "edges"

    def check(self, n_blocks: int) -> None:
        """Raise ValueError if these options cannot apply to a model of n_blocks blocks."""
        if self.method not in METHODS:
            raise ValueError(f"unknown emulator method {self.method!r}; choose one of {METHODS}")
        if self.method == "full":
            return  # first/last/keep do not apply: nothing is removed
        if self.placement not in PLACEMENTS:
            raise ValueError(f"unknown adapter placement {self.placement!r}; choose one of {PLACEMENTS}")
        if self.placement == "spread" and self.method != "crash":
            raise ValueError("adapter placement 'spread' needs method 'crash'")
        middle = n_blocks - self.first - self.last
        if self.first < 0 or self.last < 0 or self.first + self.last == 0:
            raise ValueError("the adapter needs at least one block (first + last ≥ 1)")
        if middle < 1 or not 1 <= self.keep <= middle:
            raise ValueError(
                f"a {n_blocks}-block model with {self.first}+{self.last} adapter blocks has {middle} middle "
                f"blocks; keep must be between 1 and {max(middle, 1)} (got {self.keep})"
            )


def derive_emulator(
    full: nn.Module,
    options: EmulatorOptions = EmulatorOptions(),
    calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
    tokenizer=None,
) -> Emulator:
    """Build an emulator of `full` (left unchanged). CRaSh needs calibration (input_ids, attention_mask)."""
    n = num_blocks(full)
    options.check(n)
    first, last = list(range(options.first)), list(range(n - options.last, n))
    middle = list(range(options.first, n - options.last))
    clusters = None
    if options.method == "full":
        layout, adapter = list(range(n)), list(range(n))
    elif options.method == "uniform":
        layout = first + uniform_keep(middle, options.keep) + last
        adapter = first + last
    else:
        if calibration is None:
            raise ValueError("the crash method needs calibration text (input_ids, attention_mask)")
        sim = cka_matrix(block_features(full, *calibration))
        if options.placement == "edges":
            sub = sim[options.first : n - options.last, options.first : n - options.last]
            clusters = [[b + options.first for b in c] for c in adjacent_clusters(sub, options.keep)]
            layout = first + shared_layout(clusters) + last
            adapter = first + last
        else:
            total = options.first + options.keep + options.last
            clusters = adjacent_clusters(sim, total)
            layout = shared_layout(clusters)
            adapter = spread_pick([representative(c) for c in clusters], options.first + options.last)
    manifest = Manifest(
        method=options.method,
        layout=layout,
        adapter_blocks=adapter,
        num_source_blocks=n,
        model_type=model_type(full),
        source_hash=state_dict_hash(full),
        options={
            "first": options.first,
            "last": options.last,
            "keep": options.keep,
            "placement": options.placement,
        },
        clusters=clusters,
    )
    return Emulator(assemble(full, layout), manifest, tokenizer)
