"""Central DP through Flower's fixed-clipping wrappers, ε from Flower's RdpAccountant."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dp_accounting import dp_event, rdp

from coordinator.federation.checkpoint import load_latest
from coordinator.federation.lineage import read_lineage

from .harness import run, statuses
from .poison import malicious_sites, norm_update


def _epsilon(noise: float, releases: int, delta: float) -> float:
    """ε of `releases` Gaussian releases, computed with dp-accounting directly (the reference)."""
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_event.GaussianDpEvent(noise), releases)
    return accountant.get_epsilon(delta)


def test_server_side_dp_noises_the_mean_and_reports_epsilon_per_round(quick_run, tmp_path):
    dp = {"dp": "server", "dp-noise-multiplier": 1.5, "dp-clip-norm": 0.05, "dp-delta": 1e-5}
    base = {**quick_run, "rounds": 2, "clients-per-round": 2}
    report, _ = run({**base, **dp}, tmp_path, n=2)
    eps = [r["privacy"]["epsilon"] for r in report["rounds"]]
    assert eps[0] == _epsilon(1.5, 1, 1e-5) and eps[1] == _epsilon(1.5, 2, 1e-5) and eps[0] < eps[1]
    assert report["privacy"]["epsilon"] == eps[1] and report["privacy"]["releases"] == 2
    assert [e["record"]["privacy"]["epsilon"] for e in read_lineage(report["run_dir"])] == eps
    # The noise is really there: the same run without DP ends elsewhere, by about z·C/n per entry.
    plain, _ = run({**base, "run-name": "plain"}, tmp_path, n=2)
    a = load_latest(Path(report["run_dir"]))["adapter"]
    b = load_latest(Path(plain["run_dir"]))["adapter"]
    diff = torch.cat([(a[k] - b[k]).flatten() for k in a])
    assert 0.5 * 1.5 * 0.05 / 2 < float(diff.std()) < 4 * 1.5 * 0.05 / 2
    assert plain["privacy"] is None


def test_client_side_dp_refuses_an_unclipped_update_and_spends_nothing(quick_run, tmp_path):
    dp = {"dp": "client", "dp-noise-multiplier": 1.0, "dp-clip-norm": 0.05}
    client = malicious_sites({1: norm_update(1.0)})  # site 1 ignores the clipping bound
    report, grid = run({**quick_run, **dp, "clients-per-round": 2}, tmp_path, n=2, client=client)
    rows = statuses(report)
    assert rows[1000][0] == "ok" and rows[1000][1] == ""
    assert rows[1001][0] == "dropped" and "did not clip" in rows[1001][1]
    assert report["rounds"][0]["clients"][0]["update-norm"] <= 0.05 * 1.01
    # Flower's accounted wrapper releases nothing when a sampled site is missing: no ε is spent.
    assert not report["rounds"][0]["updated"] and report["privacy"]["epsilon"] == 0.0
    sent = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert all(m.content["config"]["clip-norm"] == 0.05 for m in sent)  # sites are told the bound


def test_seeded_dp_runs_are_reproduced_bit_for_bit(quick_run, tmp_path):
    dp = {"dp": "server", "dp-noise-multiplier": 1.0, "dp-clip-norm": 0.05, "clients-per-round": 2}
    first, _ = run({**quick_run, **dp, "run-name": "a"}, tmp_path, n=2)
    again, _ = run({**quick_run, **dp, "run-name": "b"}, tmp_path, n=2)
    other, _ = run({**quick_run, **dp, "run-name": "c", "seed": 1}, tmp_path, n=2)
    a, b, c = (load_latest(Path(r["run_dir"]))["adapter"] for r in (first, again, other))
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed: the same noise, the same adapter
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_reaching_the_epsilon_budget_is_a_clean_stop(quick_run, tmp_path):
    # The budget admits one release of noise 1.0 but not two: round 2 never starts.
    budget = (_epsilon(1.0, 1, 1e-5) + _epsilon(1.0, 2, 1e-5)) / 2
    dp = {"dp": "server", "dp-noise-multiplier": 1.0, "dp-clip-norm": 0.05, "dp-delta": 1e-5,
          "dp-max-epsilon": budget, "rounds": 3, "clients-per-round": 2}  # fmt: skip
    report, _ = run({**quick_run, **dp}, tmp_path, n=2)
    assert [r["round"] for r in report["rounds"]] == [1]
    assert "dp-max-epsilon" in report["stopped_early"] and "round 2" in report["stopped_early"]
    assert report["privacy"]["epsilon"] <= budget and report["five_numbers"]["plug-in"] is not None
    assert (Path(report["run_dir"]) / "adapter.safetensors").exists()


def test_dp_with_secure_aggregation_needs_client_clipping_and_whole_blocks(quick_run):
    from coordinator.config import ConfigError, FederationConfig

    both = {**quick_run, "secure-aggregation": True, "clients-per-round": 3, "min-clients": 2}
    assert FederationConfig.from_run_config({**both, "dp": "client"}).dp == "client"
    with pytest.raises(ConfigError, match="cannot clip them: use dp=client"):
        FederationConfig.from_run_config({**both, "dp": "server"})
    with pytest.raises(ConfigError, match="lora-rank=0"):
        FederationConfig.from_run_config({**both, "dp": "client", "lora-rank": 4})
