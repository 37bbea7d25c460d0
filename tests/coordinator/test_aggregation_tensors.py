import pytest
import torch
from peft.utils import merge_utils

from coordinator.aggregation.registry import aggregate, names
from coordinator.aggregation.tensors import (
    dare_drop,
    dare_linear,
    dare_ties,
    elect_sign_mask,
    magnitude_prune,
    task_arithmetic,
    ties,
    weighted_disjoint_mean,
    weighted_mean,
)


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_weighted_mean_weighs_by_example_count_and_keeps_dtype():
    deltas = [{"w": _t(1.0, 2.0).half()}, {"w": _t(5.0, -2.0).half()}]
    out = weighted_mean(deltas, [1, 3])
    assert out["w"].dtype == torch.float16
    assert torch.equal(out["w"].float(), _t(4.0, -1.0))
    assert torch.allclose(task_arithmetic(deltas, [1, 3], scale=0.5)["w"].float(), _t(2.0, -0.5))


# Three clients, one 4-entry tensor, density 0.5 keeps 2 entries each; example counts 1, 1, 2.
#   d1 = [ 1, -0.5,  0.2, 0.9]  -> trimmed [ 1, 0,  0, 0.9]
#   d2 = [-5,  4,    0.1, -0.3] -> trimmed [-5, 4,  0, 0  ]
#   d3 = [ 3,  2,   -4,   1  ]  -> trimmed [ 3, 0, -4, 0  ]
# entry 0: weighted vote 1·1 + 1·(-5) + 2·3 = +2 -> "+", agreeing d1, d3: (1·1 + 2·3)/3 = 7/3
#          (the unweighted vote 1 - 5 + 3 = -1 would elect "-" and keep only d2)
# entry 1: only d2 survives trimming -> 4   (untrimmed, d3's 2 would agree and pull it to 8/3)
# entry 2: only d3 survives -> -4;  entry 3: only d1 survives -> 0.9
TIES_DELTAS = [
    {"w": _t(1.0, -0.5, 0.2, 0.9)},
    {"w": _t(-5.0, 4.0, 0.1, -0.3)},
    {"w": _t(3.0, 2.0, -4.0, 1.0)},
]
TIES_COUNTS = [1, 1, 2]


def test_ties_trims_elects_by_weighted_vote_and_takes_weighted_disjoint_mean():
    out = ties(TIES_DELTAS, TIES_COUNTS, density=0.5)["w"]
    assert torch.allclose(out, _t(7 / 3, 4.0, -4.0, 0.9))
    # peft's ties votes unweighted and divides by the agreeing count: entry 0 becomes -5·0.25.
    peft_out = merge_utils.ties([d["w"] for d in TIES_DELTAS], _t(0.25, 0.25, 0.5), density=0.5)
    assert peft_out[0] == pytest.approx(-1.25)


def test_ties_frequency_vote_is_weighted_count_of_signs():
    # entry 0: signs +, -, + with weights 1, 1, 2 -> +; values 1 and 3 weighted (1·1 + 2·3)/3
    out = ties(TIES_DELTAS, TIES_COUNTS, density=0.5, majority_sign_method="frequency")["w"]
    assert out[0] == pytest.approx(7 / 3)
    # A heavy client outvotes two light ones by count but not by magnitude.
    deltas = [{"w": _t(1.0)}, {"w": _t(1.0)}, {"w": _t(-0.1)}]
    assert ties(deltas, [1, 1, 5], density=1.0, majority_sign_method="frequency")[
        "w"
    ].item() == pytest.approx(-0.1)
    assert ties(deltas, [1, 1, 5], density=1.0)["w"].item() == pytest.approx(1.0)


def test_weighted_disjoint_mean_differs_from_peft_disjoint_merge():
    stacked = torch.tensor([[2.0, 1.0], [4.0, -3.0]])
    counts = torch.tensor([1.0, 3.0])
    mask = elect_sign_mask(stacked, counts)
    assert mask.tolist() == [[True, False], [True, True]]  # entry 1: 1·1 + 3·(-3) < 0
    ours = weighted_disjoint_mean(stacked, counts, mask)
    assert torch.allclose(ours, _t((1 * 2 + 3 * 4) / 4, -3.0))
    # peft divides by the number of agreeing clients, whatever weights were folded in beforehand.
    w = (counts / counts.sum()).view(-1, 1)
    assert torch.allclose(merge_utils.disjoint_merge(stacked * w, mask), _t(1.75, -2.25))
    assert torch.allclose(merge_utils.disjoint_merge(stacked * counts.view(-1, 1), mask), _t(7.0, -9.0))
    assert not torch.allclose(merge_utils.disjoint_merge(stacked, mask), ours)


def test_weighted_disjoint_mean_is_zero_where_no_client_agrees():
    stacked = torch.zeros(2, 3)
    assert torch.equal(
        weighted_disjoint_mean(stacked, _t(1, 1), elect_sign_mask(stacked, _t(1, 1))), torch.zeros(3)
    )


def test_magnitude_prune_trims_then_averages():
    deltas = [{"w": _t(1.0, -3.0, 2.0, 0.5)}, {"w": _t(0.1, 0.2, -0.3, 4.0)}]
    out = magnitude_prune(deltas, [3, 1], density=0.5)["w"]
    # trimmed: [0, -3, 2, 0] and [0, 0, -0.3, 4]
    assert torch.allclose(out, _t(0.0, -2.25, 1.425, 1.0))


def test_dare_drop_is_seeded_sparse_and_rescaled():
    delta = {"a": torch.linspace(0.1, 1.0, 200), "b": torch.ones(3, 5)}
    one, again = dare_drop(delta, 0.75, seed=7), dare_drop(delta, 0.75, seed=7)
    assert all(torch.equal(one[k], again[k]) for k in delta)
    assert not torch.equal(one["a"], dare_drop(delta, 0.75, seed=8)["a"])
    kept = one["a"] != 0
    assert 20 < int(kept.sum()) < 80  # ~50 of 200
    assert torch.allclose(one["a"][kept], 4 * delta["a"][kept])


def test_dare_linear_is_unbiased_over_seeds():
    g = torch.Generator().manual_seed(0)
    deltas = [{"w": torch.rand(40, generator=g) * 2 - 1} for _ in range(2)]
    counts = [1, 3]
    target = weighted_mean(deltas, counts)["w"]
    runs = 1000
    avg = sum(dare_linear(deltas, counts, p=0.5, seed=s)["w"] for s in range(runs)) / runs
    # per-entry std of one run ≤ sqrt(Σ w_i² δ_i² p/(1−p)) ≤ sqrt(0.625) ≈ 0.8, so ≈0.025 after 1000 runs
    assert (avg - target).abs().max() < 0.12
    assert not torch.allclose(dare_linear(deltas, counts, p=0.5, seed=0)["w"], target)


def test_dare_ties_without_drop_is_ties_without_trim():
    a = dare_ties(TIES_DELTAS, TIES_COUNTS, p=0.0, seed=3)["w"]
    b = ties(TIES_DELTAS, TIES_COUNTS, density=1.0)["w"]
    assert torch.allclose(a, b)


def test_aggregate_dispatches_and_checks_parameters():
    assert set(names("delta")) >= {
        "fedavg",
        "task_arithmetic",
        "ties",
        "dare_linear",
        "dare_ties",
        "magnitude_prune",
    }
    assert torch.allclose(
        aggregate("ties", TIES_DELTAS, TIES_COUNTS, density=0.5)["w"][0], torch.tensor(7 / 3)
    )
    with pytest.raises(ValueError, match=r"unknown aggregator 'fedprox'.*known: .*fedavg"):
        aggregate("fedprox", TIES_DELTAS, TIES_COUNTS)
    with pytest.raises(ValueError, match=r"takes no parameter\(s\) \['p'\]"):
        aggregate("ties", TIES_DELTAS, TIES_COUNTS, density=0.5, p=0.1)
    with pytest.raises(ValueError, match=r"needs parameter\(s\) \['density'\]"):
        aggregate("ties", TIES_DELTAS, TIES_COUNTS)


@pytest.mark.parametrize(
    ("deltas", "weights", "params", "message"),
    [
        ([], [], {}, "empty list"),
        ([{"w": _t(1.0, float("nan"))}, {"w": _t(1.0, 2.0)}], [1, 1], {}, r"client 0 'w' has 1 non-finite"),
        ([{"w": _t(1.0, 2.0)}, {"w": _t(1.0, float("inf"))}], [1, 1], {}, r"client 1 'w' has 1 non-finite"),
        ([{"w": _t(1.0, 2.0)}, {"w": _t(1.0, 2.0, 3.0)}], [1, 1], {}, r"client 1 'w' has shape \(3,\)"),
        ([{"w": _t(1.0)}, {"v": _t(1.0)}], [1, 1], {}, r"missing \['w'\], unexpected \['v'\]"),
        ([{"w": _t(1.0)}, {"w": _t(1.0)}], [1], {}, "1 weight"),
        ([{"w": _t(1.0)}, {"w": _t(1.0)}], [1, -1], {}, "non-negative"),
        ([{"w": _t(1.0)}, {"w": _t(1.0)}], [0, 0], {}, "sum to zero"),
        ([{"w": torch.tensor([1])}, {"w": torch.tensor([2])}], [1, 1], {}, "floating point"),
    ],
)
def test_bad_inputs_raise_clear_errors(deltas, weights, params, message):
    with pytest.raises(ValueError, match=message):
        aggregate("fedavg", deltas, weights, **params)


def test_bad_hyperparameters_raise():
    d = [{"w": _t(1.0, 2.0)}, {"w": _t(3.0, 4.0)}]
    with pytest.raises(ValueError, match="density"):
        ties(d, [1, 1], density=0.0)
    with pytest.raises(ValueError, match="drop probability"):
        dare_linear(d, [1, 1], p=1.0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        dare_linear(d, [1, 1], p=0.5, seed=-1)
    with pytest.raises(ValueError, match="sign method"):
        ties(d, [1, 1], density=0.5, majority_sign_method="vote")
