"""One run through Flower's real simulation engine (Ray) via `offsite run`, with a hard timeout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


@pytest.mark.slow
def test_ray_simulation_two_rounds(small_run, tmp_path):
    overrides = {
        **small_run,
        "rounds": 2,
        "client-eval": "final",
        "node-timeout": 60.0,
        "round-timeout": 300.0,  # a bound, not a wait: a loaded 2-core machine takes > 60 s per round
        "partitioning": "iid",  # read by the ClientApps from the run config: must reach them
        "max-examples": 0,
    }
    env = {
        **os.environ,
        "OFFSITE_CACHE_DIR": str(tmp_path / "cache"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),  # this checkout, whichever one is pip-installed (Ray workers inherit it)
    }
    run_config = " ".join(f"{k}={_toml(v)}" for k, v in overrides.items())
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator.cli", "run", "--app", str(ROOT), "--supernodes", "2", "-c", run_config],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=240)
    finally:  # also takes down Ray's daemons if the run hangs
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    report_path = Path(small_run["out-dir"]) / "r" / "report.json"
    assert proc.returncode == 0 and report_path.exists(), stdout[-3000:] + stderr[-6000:]
    assert "plug-in" in stdout
    report = json.loads(report_path.read_text())
    print("simulation timing", json.dumps(report["timing"]), "bytes",
          json.dumps({k: v for k, v in report["bytes"].items() if k != "per_round"}))  # fmt: skip
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(c["status"] == "ok" for r in rounds for c in r["clients"])
    assert [sum(c["standin_sent"] for c in r["clients"]) for r in rounds] == [2, 0]
    # iid halves the 4000 training examples (the default dirichlet split would be uneven).
    assert [c["num-examples"] for c in rounds[0]["clients"]] == [2000, 2000]
    assert report["client_eval"]["clients"] == 2
    # The simulated nodes used the cache directory the test gave them (env reaches Ray workers).
    assert (tmp_path / "cache" / report["standin"]["hash"] / "manifest.json").exists()
