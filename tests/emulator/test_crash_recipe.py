"""CRaSh recipe: balanced (size-bounded) clustering and the sharing modes full / partial:R / none."""

import itertools

import pytest
import torch

from emulator.crash import (
    adjacent_clusters,
    balanced_cap,
    bounded_clusters,
    share_repeats,
    shared_layout,
)
from emulator.derive import EmulatorOptions, derive_emulator
from emulator.plugin import plug_in
from emulator.recipe import Recipe
from tests.conftest import tiny_model


def _plateau(n: int, start: int, stop: int) -> torch.Tensor:
    """A CKA-like matrix whose blocks start..stop-1 are nearly identical and the rest dissimilar."""
    sim = torch.full((n, n), 0.3, dtype=torch.float64)
    sim[start:stop, start:stop] = 0.99
    sim.fill_diagonal_(1.0)
    return sim


def _longest_run(layout: list[int]) -> int:
    return max(len(list(g)) for _, g in itertools.groupby(layout))


def test_adjacent_merging_swallows_a_plateau_and_the_bound_stops_it():
    sim = _plateau(26, 4, 24)  # like SmolLM2's middle: 20 similar blocks in a row
    assert max(map(len, adjacent_clusters(sim, 6))) == 20
    clusters = bounded_clusters(sim, 6, balanced_cap(26, 6))
    assert max(map(len, clusters)) == 5 == balanced_cap(26, 6)
    assert sum(clusters, []) == list(range(26))  # contiguous, in order, every block once


@pytest.mark.parametrize("seed", range(20))
def test_unbounded_clusters_equal_adjacent_merging(seed):
    gen = torch.Generator().manual_seed(seed)
    n = 4 + seed % 9
    sim = torch.rand(n, n, generator=gen, dtype=torch.float64)
    sim = (sim + sim.T) / 2
    for k in range(1, n + 1):
        assert bounded_clusters(sim, k, n) == adjacent_clusters(sim, k)
        bounded = bounded_clusters(sim, k, balanced_cap(n, k))
        assert len(bounded) == k and max(map(len, bounded)) <= balanced_cap(n, k)


def test_bound_too_small_to_cover_is_refused():
    with pytest.raises(ValueError, match="cannot cover"):
        bounded_clusters(_plateau(10, 0, 10), 3, 3)


def test_share_modes_repeat_each_representative_at_most_r_times():
    clusters = [[2, 3, 4], [5, 6], [7]]
    assert shared_layout(clusters, repeats=share_repeats("full")) == [3, 3, 3, 5, 5, 7]
    assert shared_layout(clusters, repeats=share_repeats("partial:2")) == [3, 3, 5, 5, 7]
    assert shared_layout(clusters, repeats=share_repeats("none")) == [3, 5, 7]
    for bad in ("partial", "partial:0", "half"):
        with pytest.raises(ValueError, match="sharing mode"):
            share_repeats(bad)


@pytest.mark.parametrize(
    ("clustering", "share", "depth", "longest"),
    [
        ("adjacent", "full", 12, 6),  # the collapse: one cluster of 6 run 6 times in a row
        ("balanced", "full", 12, 3),
        ("balanced", "partial:2", 10, 2),
        ("balanced", "none", 7, 1),
    ],
)
def test_derived_layouts_and_exact_plug_in(token_batch, clustering, share, depth, longest):
    full = tiny_model("llama", layers=12)
    sim = _plateau(12, 3, 10)  # middle blocks 2..9; 3..9 form the plateau
    options = EmulatorOptions("crash", 2, 2, keep=3, clustering=clustering, share=share)
    emu = derive_emulator(full, options, similarity=sim)
    layout = emu.manifest.layout
    assert len(layout) == depth and layout[:2] == [0, 1] and layout[-2:] == [10, 11]
    assert _longest_run(layout[2:-2]) == longest and len(set(layout[2:-2])) == 3
    assert emu.manifest.options["clustering"] == clustering and emu.manifest.options["share"] == share
    ids, mask = token_batch
    with torch.no_grad():
        reference = full(input_ids=ids, attention_mask=mask).logits
        plugged = plug_in(full, emu.adapter_state_dict())
        assert torch.equal(plugged(input_ids=ids, attention_mask=mask).logits, reference)


def test_unknown_clustering_or_share_is_refused():
    with pytest.raises(ValueError, match="clustering"):
        EmulatorOptions("crash", clustering="greedy").check(12)
    with pytest.raises(ValueError, match="sharing mode"):
        EmulatorOptions("crash", share="all").check(12)


def test_cli_refuses_an_unknown_share_mode_before_loading_a_model(tmp_path):
    from typer.testing import CliRunner

    from coordinator.cli import app

    result = CliRunner().invoke(app, ["experiment", "--share", "half", "--out", str(tmp_path / "x.json")])
    assert result.exit_code == 2 and "sharing mode 'half'" in result.output
    result = CliRunner().invoke(app, ["derive", "--share", "partial:0", "--out", str(tmp_path / "emu")])
    assert result.exit_code == 2 and "sharing mode" in result.output


def test_recipe_follows_model_size():
    from emulator.recipe import recipe_for

    # zoo:base (6.9M, 12 blocks) keeps its recipe: lr 1e-3, full sharing, 3 of its 8 middle blocks
    assert recipe_for(6_900_000, 12, 2, 2) == Recipe(lr=1e-3, share="full", keep=3)
    # SmolLM2-135M (30 blocks): lr 3e-4, no sharing, 9 of 26
    assert recipe_for(135_000_000, 30, 2, 2) == Recipe(lr=3e-4, share="none", keep=9)
    assert recipe_for(1_000_000, 5, 2, 2).keep == 1  # never below one block


def test_recipe_is_counted_from_the_model_itself():
    from emulator.recipe import recipe_for_model
    from emulator.zoo import load_model

    base, _ = load_model("zoo:base")
    assert recipe_for_model(base, 2, 2) == Recipe(lr=1e-3, share="full", keep=3)
    assert recipe_for_model(base, 1, 1).keep == round(10 / 3)


def test_federation_fills_lr_share_and_keep_from_the_model_only_where_left_unset():
    from coordinator.config import FederationConfig
    from emulator.recipe import recipe_for

    cfg = FederationConfig()
    assert (cfg.lr, cfg.share, cfg.keep) == (0.0, "auto", 0)
    big = cfg.with_recipe(recipe_for(135_000_000, 30, 2, 2))
    assert (big.lr, big.share, big.keep) == (3e-4, "none", 9)
    mine = cfg.replace(lr=5e-3, share="partial:2", keep=4).with_recipe(recipe_for(135_000_000, 30, 2, 2))
    assert (mine.lr, mine.share, mine.keep) == (5e-3, "partial:2", 4)
    control = cfg.replace(standin="control").with_recipe(recipe_for(135_000_000, 30, 2, 2))
    assert control.lr == 1e-3  # the control model is trained from scratch


def test_every_entry_point_resolves_the_recipe_in_one_place():
    from emulator.recipe import recipe_for_model, resolve_recipe

    full = tiny_model("llama", layers=10)
    auto = recipe_for_model(full, 2, 2)
    recipe, line = resolve_recipe(full, 2, 2, None, "auto", 0)
    assert recipe == auto and line.count("(by size)") == 3
    given, line = resolve_recipe(full, 2, 2, 5e-5, "partial:2", 4)
    assert (given.lr, given.share, given.keep) == (5e-5, "partial:2", 4) and "(by size)" not in line
