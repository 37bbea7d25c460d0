"""Runs that die are marked: a coordinator stopped by SIGTERM/SIGINT marks its run stopped with the
reason; one killed by SIGKILL goes stale on the dashboard once its heartbeat is older than a round-timeout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from client.client_app import app as client_app
from coordinator.config import FederationConfig
from coordinator.federation.inprocess_grid import InProcessGrid
from coordinator.federation.loop import run_federation
from coordinator.federation.run import RunSignalled, StopSignals
from coordinator.ops.dashboard import create_app
from coordinator.ops.observers import RunObserver
from coordinator.ops.runstore import RunStore, default_store_url
from coordinator.ops.runstore.store import mark_staleness

ROOT = Path(__file__).resolve().parents[2]


def _wait_for(what: str, check, timeout: float = 240.0, proc: subprocess.Popen | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process ended (exit {proc.returncode}) before {what}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _coordinator(overrides: dict, tmp_path: Path) -> subprocess.Popen:
    path = tmp_path / "overrides.json"
    path.write_text(json.dumps(overrides))
    return subprocess.Popen(
        [sys.executable, "-m", "tests.ops.coordinator_proc", str(path)],
        cwd=ROOT,
        env={**os.environ, "SLOW_S": "1.0"},
        stderr=subprocess.PIPE,
        text=True,
    )


def _signal_mid_round(sig: signal.Signals, url: str, ops_run: dict, tmp_path: Path):
    """Start a long run in a subprocess, send `sig` while round 2 is under way; (returncode, stderr, run)."""
    proc = _coordinator({**ops_run, "rounds": 50, "eval-every": 0, "store-url": url}, tmp_path)
    try:
        store = RunStore(url)

        def round_two_under_way():
            runs = store.list_runs()
            return runs and runs[0]["current_round"] == 1 and runs[0]["active_round"] == 2

        _wait_for("round 2", round_two_under_way, proc=proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    (run,) = store.list_runs()
    return proc.returncode, err, store, run


def test_sigterm_marks_the_run_stopped_with_the_reason(store_url, ops_run, tmp_path):
    code, err, store, run = _signal_mid_round(signal.SIGTERM, store_url, ops_run, tmp_path)
    assert code == -signal.SIGTERM, err[-3000:]  # then the signal's default action, as without us
    assert run["status"] == "stopped" and run["current_round"] == 1 and run["active_round"] is None
    assert not run["stale"]
    event = store.events(run["id"])[0]
    assert event["kind"] == "stopped"
    assert "coordinator received SIGTERM during round 2" in event["message"]
    assert "resume=true" in event["message"]
    detail = TestClient(create_app(store_url)).get(f"/api/runs/{run['id']}").json()
    assert detail["run"]["status"] == "stopped" and "SIGTERM" in detail["events"][0]["message"]


class _InterruptAt(RunObserver):
    """Sends this process SIGINT (Ctrl-C) when round `rnd` starts."""

    def __init__(self, rnd: int):
        self.rnd = rnd

    def round_started(self, rnd, nodes):
        if rnd == self.rnd:
            os.kill(os.getpid(), signal.SIGINT)


def test_sigint_marks_the_run_stopped_and_ends_in_keyboard_interrupt(ops_run, tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    cfg = FederationConfig.from_run_config({**ops_run, "rounds": 3, "eval-every": 0})
    nodes = {
        1000 + i: {"partition-id": i, "num-partitions": 2, "cache-dir": str(tmp_path / "c")} for i in range(2)
    }
    grid = InProcessGrid(client_app, nodes, cfg.to_run_config())
    with pytest.raises(KeyboardInterrupt):  # the signal's usual course once the run is marked
        run_federation(grid, cfg, observers=[_InterruptAt(2)])
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    store = RunStore(default_store_url(ops_run["out-dir"]))
    (run,) = store.list_runs()
    assert run["status"] == "stopped" and run["current_round"] == 1
    assert "coordinator received SIGINT during round 2" in store.events(run["id"])[0]["message"]


def test_stop_signals_restore_the_old_handlers_and_redeliver_the_signal():
    seen = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        signals = StopSignals.install()
        assert signal.getsignal(signal.SIGTERM) == signals._handle
        with pytest.raises(RunSignalled) as caught:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here
        assert caught.value.stop_reason == "coordinator received SIGTERM"
        signals.resume(caught.value)  # the old handler gets the signal once the run is marked
        assert seen == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, before)


def test_killed_coordinator_goes_stale_once_its_heartbeat_is_older_than_a_round_timeout(store_url, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.ops.store_writer", store_url, str(tmp_path / "run"), "1", "--hold"],
        cwd=ROOT,
        env={**os.environ, "ROUND_TIMEOUT_S": "2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "holding", proc.stderr.read()
        client = TestClient(create_app(store_url))
        (listed,) = client.get("/api/runs").json()["runs"]
        run_id = listed["id"]
        time.sleep(3.0)  # longer than the round-timeout: only the heartbeat keeps the run fresh
        run = client.get(f"/api/runs/{run_id}").json()["run"]
        assert run["status"] == "running" and run["active_round"] == 2
        assert not run["stale"] and run["heartbeat_age_s"] < 2.0 and run["stale_after_s"] == 2.0
        proc.kill()
        proc.wait(timeout=30)
        killed_at = time.time()
        stale = _wait_for("stale", lambda: client.get(f"/api/runs/{run_id}").json()["run"]["stale"], 30)
        assert stale and time.time() - killed_at > 0.5
        (listed,) = client.get("/api/runs").json()["runs"]
        assert listed["stale"] and listed["status"] == "running"  # the store keeps what it knew
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_run_still_going_when_the_process_exits_is_marked_stopped(store_url, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tests.ops.store_writer", store_url, str(tmp_path / "run"), "1", "--exit"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    store = RunStore(store_url)
    (run,) = store.list_runs()
    assert run["status"] == "stopped" and run["current_round"] == 1 and not run["stale"]
    assert "coordinator process exited during round 2" in store.events(run["id"])[0]["message"]


def test_staleness_is_judged_against_the_runs_round_timeout():
    row = {"status": "running", "updated_at": 1000.0}
    assert mark_staleness(dict(row), {"round-timeout": 60.0}, now=1059.0)["stale"] is False
    assert mark_staleness(dict(row), {"round-timeout": 60.0}, now=1061.0)["stale"] is True
    assert mark_staleness(dict(row), {}, now=1500.0)["stale"] is False  # default round-timeout 600 s
    assert mark_staleness({**row, "status": "finished"}, {"round-timeout": 1}, now=9999.0)["stale"] is False
