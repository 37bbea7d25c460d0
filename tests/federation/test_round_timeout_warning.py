"""A round that loses sites to round-timeout, or comes close to it, says so and what to change."""

from __future__ import annotations

import logging

from coordinator.config import FederationConfig
from coordinator.federation.loop import warn_if_near_round_timeout


def _entry(train_s: float, statuses: list[str]) -> dict:
    return {"train_s": train_s, "clients": [{"node": i, "status": s} for i, s in enumerate(statuses)]}


def test_timed_out_sites_and_near_misses_are_warned_about(caplog):
    cfg = FederationConfig().replace(round_timeout=100.0)
    with caplog.at_level(logging.WARNING, logger="offsite.coordinator"):
        lost = warn_if_near_round_timeout(cfg, 2, _entry(100.2, ["ok", "timeout", "ok", "timeout"]))
        close = warn_if_near_round_timeout(cfg, 3, _entry(85.0, ["ok", "ok"]))
        fine = warn_if_near_round_timeout(cfg, 4, _entry(50.0, ["ok", "dropped"]))
    assert lost.startswith("round 2: 2 of 4 sites sent nothing within round-timeout 100 s")
    assert "larger round-timeout" in lost
    assert close.startswith("round 3: the slowest site answered after 85 s of the 100 s round-timeout")
    assert fine is None
    assert [r.getMessage() for r in caplog.records] == [lost, close]
