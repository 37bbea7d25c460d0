"""A Byzantine site (sign-flipped, 50x boosted update) against FedAvg and Flower's robust strategies."""

from __future__ import annotations

from pathlib import Path

import torch

from coordinator.aggregation import registry
from coordinator.federation.checkpoint import list_checkpoints

from .harness import run
from .poison import malicious_sites, scaled_update


def _global_step(run_dir: str) -> float:
    """L2 norm of the change of the global adapter in the run's one round."""
    first, last = (torch.load(p, weights_only=True)["adapter"] for p in list_checkpoints(Path(run_dir)))
    return float(torch.sqrt(sum((last[k] - first[k]).double().pow(2).sum() for k in first)))


def test_byzantine_site_wrecks_fedavg_but_not_median_or_krum(quick_run, tmp_path):
    client = malicious_sites({3: scaled_update(-50.0)})
    steps, honest = {}, {}
    for aggregator in ("fedavg", "fedmedian", "krum"):
        overrides = {**quick_run, "clients-per-round": 4, "aggregator": aggregator, "run-name": aggregator}
        report, _ = run(overrides, tmp_path, n=4, client=client)
        rows = report["rounds"][0]["clients"]
        assert all(c["status"] == "ok" for c in rows)  # no norm bound set: validation lets it in
        honest[aggregator] = max(c["update-norm"] for c in rows if c["node"] != 1003)
        steps[aggregator] = _global_step(report["run_dir"])
    # FedAvg moves the adapter ~50/4 honest updates' worth, against the honest sites.
    assert steps["fedavg"] > 5 * honest["fedavg"]
    # The robust merges stay within the honest sites' scale.
    assert steps["fedmedian"] <= 1.01 * honest["fedmedian"]
    assert steps["krum"] <= 1.01 * honest["krum"]


def test_robust_merges_on_synthetic_deltas():
    torch.manual_seed(0)
    prev = {"w": torch.zeros(64), "b": torch.zeros(8)}
    target = {"w": torch.full((64,), 0.01), "b": torch.full((8,), 0.01)}
    honest = [{k: v + 0.001 * torch.randn_like(v) for k, v in target.items()} for _ in range(4)]
    byzantine = {k: -100 * v for k, v in target.items()}
    deltas, weights = [*honest, byzantine], [1.0] * 5
    for name, params in (
        ("fedmedian", {}),
        ("fedtrimmedavg", {"beta": 0.2}),
        ("krum", {"num_malicious_nodes": 1}),
    ):
        merged = registry.get(name, "robust").fn(prev, deltas, weights, 1, **params)
        err = max(float((merged[k] - target[k]).abs().max()) for k in target)
        assert err < 0.005, (name, err)
    mean = {k: sum(d[k] for d in deltas) / 5 for k in prev}
    assert float((mean["w"] - target["w"]).abs().max()) > 0.1  # what a plain mean does
