"""End to end through real Flower processes: one `flower-superlink`, two `flower-supernode`s, `flwr run`.

Loopback only, `--insecure` (TLS is tested elsewhere), runtime dependency installation disabled,
telemetry off. Every wait is bounded, and every process is killed with its process group at the end.

One deployment serves three runs: an uninterrupted one; one whose coordinator (`flwr-serverapp`) is
SIGKILLed mid-run; and its `resume=true` continuation, which must end where the first one did.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from coordinator.federation.checkpoint import list_checkpoints

from .loopback import Loopback


def _kill_coordinator_after_round(net: Loopback, run_dir: Path, rnd: int, timeout: float) -> int:
    """SIGKILL the ServerApp process once round `rnd` is checkpointed; the newest round on disk."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list_checkpoints(run_dir)) and int(list_checkpoints(run_dir)[-1].stem.split("-")[1]) >= rnd:
            break
        time.sleep(0.1)
    else:
        raise TimeoutError(f"round {rnd} not checkpointed in {timeout} s\n{net.procs.tail()}")
    pids = net.serverapp_pids()
    assert pids, "no flwr-serverapp process to kill"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return int(list_checkpoints(run_dir)[-1].stem.split("-")[1])


@pytest.mark.slow
def test_superlink_two_supernodes_and_resume_after_sigkill(small_run, tmp_path):
    net = Loopback(tmp_path)
    out = Path(small_run["out-dir"])
    try:
        net.start_superlink()
        for i in range(2):
            net.start_supernode(
                f"supernode-{i}", f"partition-id={i} num-partitions=2 cache-dir='{tmp_path / f'cache-{i}'}'"
            )
        overrides = {
            **small_run,
            "emulator": "crash",  # exercises public calibration text found outside the FAB
            "calibration-texts": 16,
            "min-clients": 2,  # wait for both sites (not only until the node count settles)
            "client-eval": "none",  # the Ray test covers evaluate; each message here starts a process
            "node-timeout": 60.0,
            "round-timeout": 120.0,
        }

        # 1. An uninterrupted run of two rounds.
        run_id = net.submit(overrides)
        status = net.wait_finished(run_id, timeout=200)
        report_path = out / "r" / "report.json"
        assert status == "finished:completed" and report_path.exists(), net.diagnostics(run_id)
        report = json.loads(report_path.read_text())
        rounds = report["rounds"]
        assert [r["round"] for r in rounds] == [1, 2], net.diagnostics(run_id)
        assert all(c["status"] == "ok" for r in rounds for c in r["clients"]), net.diagnostics(run_id)
        assert [sum(c["standin_sent"] for c in r["clients"]) for r in rounds] == [2, 0]
        print("deployment timing", json.dumps(report["timing"]),
              "bytes", json.dumps({k: v for k, v in report["bytes"].items() if k != "per_round"}))  # fmt: skip
        for i in range(2):  # each site keeps the stand-in in its own on-disk cache
            assert (tmp_path / f"cache-{i}" / report["standin"]["hash"] / "manifest.json").exists()

        # 2. The same run under another name, its coordinator killed once round 1 is checkpointed.
        killed_id = net.submit({**overrides, "run-name": "k"})
        killed_at = _kill_coordinator_after_round(net, out / "k", 1, timeout=200)
        assert not (out / "k" / "report.json").exists()
        round1 = json.dumps(
            torch.load(list_checkpoints(out / "k")[-1], weights_only=True)["history"][0],
            sort_keys=True,
        )

        # 3. Resumed: finished rounds are kept, the result equals the uninterrupted run's bit for bit.
        resumed_id = net.submit({**overrides, "run-name": "k", "resume": True})
        status = net.wait_finished(resumed_id, timeout=200)
        diagnostics = f"killed run {killed_id} after round {killed_at}\n" + net.diagnostics(resumed_id)
        assert status == "finished:completed", diagnostics
        resumed = json.loads((out / "k" / "report.json").read_text())
        assert [r["round"] for r in resumed["rounds"]] == [1, 2], diagnostics
        assert json.dumps(resumed["rounds"][0], sort_keys=True) == round1  # round 1 not redone
        assert "resuming" in (out / "k" / "server.log").read_text()
        a, b = load_file(out / "r" / "adapter.safetensors"), load_file(out / "k" / "adapter.safetensors")
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), "resumed run diverged"
        assert resumed["rounds"][-1]["plug-in"] == rounds[-1]["plug-in"]
    finally:
        net.stop()
