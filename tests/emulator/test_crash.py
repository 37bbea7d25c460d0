import pytest
import torch

from emulator.crash import (
    adjacent_clusters,
    linear_cka,
    representative,
    shared_layout,
    spread_pick,
    uniform_keep,
)


def test_uniform_keep_follows_offsite_tuning_rule():
    middle = list(range(2, 10))  # 8 middle blocks of a 12-block model with 2+2 adapters
    assert uniform_keep(middle, 4) == [2, 4, 7, 9]  # round(i*7/3) = 0, 2, 5, 7
    assert uniform_keep(middle, 8) == middle
    assert uniform_keep(middle, 1) == [5]
    with pytest.raises(ValueError):
        uniform_keep(middle, 9)


def test_linear_cka_is_one_for_rotated_scaled_copy_and_low_for_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, torch.randn(200, 16, generator=g)) < 0.2


def test_adjacent_clusters_merge_most_similar_touching_blocks():
    sim = torch.eye(6, dtype=torch.float64)
    # Blocks 0-1-2 very alike, 3-4 alike, 5 alone.
    for a, b, v in [(0, 1, 0.9), (1, 2, 0.95), (3, 4, 0.8), (2, 3, 0.1), (4, 5, 0.2)]:
        sim[a, b] = sim[b, a] = v
    assert adjacent_clusters(sim, 3) == [[0, 1, 2], [3, 4], [5]]
    assert adjacent_clusters(sim, 6) == [[i] for i in range(6)]
    assert adjacent_clusters(sim, 1) == [list(range(6))]


def test_adjacent_clusters_only_merge_neighbours():
    sim = torch.eye(4, dtype=torch.float64)
    sim[0, 3] = sim[3, 0] = 0.99  # far apart: must never be merged directly
    sim[1, 2] = sim[2, 1] = 0.5
    assert adjacent_clusters(sim, 3) == [[0], [1, 2], [3]]


def test_remove_and_share_keep_depth_with_middle_member():
    clusters = [[2, 3, 4], [5, 6], [7]]
    assert [representative(c) for c in clusters] == [3, 5, 7]
    assert shared_layout(clusters) == [3, 3, 3, 5, 5, 7]
    assert spread_pick([3, 5, 7, 9], 2) == [3, 9]
