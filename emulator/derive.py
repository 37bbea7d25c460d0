"""Derive an emulator from a full model: the uniform (Offsite-Tuning) rule or CRaSh (default)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from emulator.blocks import model_type, num_blocks
from emulator.crash import (
    adjacent_clusters,
    balanced_cap,
    block_features,
    bounded_clusters,
    cka_matrix,
    representative,
    share_repeats,
    shared_layout,
    spread_pick,
    uniform_keep,
)
from emulator.emulator import Emulator, Manifest, assemble, state_dict_hash

# "full" is the identity stand-in: every block, all of them adapter (the FlowerTune-style baseline).
METHODS = ("uniform", "crash", "full")
PLACEMENTS = ("edges", "spread")
CLUSTERINGS = ("balanced", "adjacent")


@dataclass(frozen=True)
class EmulatorOptions:
    """How to derive an emulator.

    first/last: adapter blocks at the bottom/top (placement 'edges'); keep: blocks stored for the
    compressed middle (uniform: kept blocks; crash: clusters). With placement 'spread' (crash only)
    all L blocks are clustered into first+keep+last clusters and first+last representatives,
    spread over depth, become the adapter.
    clustering (crash): 'balanced' bounds each cluster to ceil(blocks/clusters) blocks;
    'adjacent' is unbounded adjacent merging. share (crash): 'full' runs each representative once
    per member of its cluster, 'partial:R' at most R times, 'none' once (cluster and remove).
    """

    method: str = "crash"
    first: int = 2
    last: int = 2
    keep: int = 4
    placement: str = "edges"
    clustering: str = "balanced"
    share: str = "full"

    def check(self, n_blocks: int) -> None:
        """Raise ValueError if these options cannot apply to a model of n_blocks blocks."""
        if self.method not in METHODS:
            raise ValueError(f"unknown emulator method {self.method!r}; choose one of {METHODS}")
        if self.method == "full":
            return  # first/last/keep do not apply: nothing is removed
        if self.clustering not in CLUSTERINGS:
            raise ValueError(f"unknown clustering {self.clustering!r}; choose one of {CLUSTERINGS}")
        share_repeats(self.share)
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
    similarity: torch.Tensor | None = None,
) -> Emulator:
    """Build an emulator of `full` (left unchanged). CRaSh needs calibration (input_ids, attention_mask).

    `similarity` is a precomputed block CKA matrix (`block_similarity`); it spares recomputing it per recipe.
    """
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
        if similarity is None and calibration is None:
            raise ValueError("the crash method needs calibration text (input_ids, attention_mask)")
        sim = block_similarity(full, calibration) if similarity is None else similarity
        repeats = share_repeats(options.share)
        if options.placement == "edges":
            sub = sim[options.first : n - options.last, options.first : n - options.last]
            clusters = [[b + options.first for b in c] for c in _clusters(sub, options.keep, options.clustering)]
            layout = first + shared_layout(clusters, repeats=repeats) + last
            adapter = first + last
        else:
            total = options.first + options.keep + options.last
            clusters = _clusters(sim, total, options.clustering)
            layout = shared_layout(clusters, repeats=repeats)
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
            "clustering": options.clustering,
            "share": options.share,
        },
        clusters=clusters,
    )
    return Emulator(assemble(full, layout), manifest, tokenizer)


def block_similarity(full: nn.Module, calibration: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Linear CKA between every pair of `full`'s blocks on calibration text: (L, L)."""
    return cka_matrix(block_features(full, *calibration))


def _clusters(sim: torch.Tensor, k: int, clustering: str) -> list[list[int]]:
    if clustering == "adjacent":
        return adjacent_clusters(sim, k)
    return bounded_clusters(sim, k, balanced_cap(sim.shape[0], k))
