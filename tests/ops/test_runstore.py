"""The run store on SQLite and PostgreSQL: what a run writes, two runs writing at once, a crash
mid-round, resume, the heartbeat, bad URLs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordinator.config import ConfigError, FederationConfig
from coordinator.ops.runstore import RunRecorder, RunStore, StoreError
from coordinator.ops.wiring import store_url_for
from tests.ops.entries import make_entry

ROOT = Path(__file__).resolve().parents[2]


def test_records_run_rounds_clients_and_events(store_url, tmp_path):
    store = RunStore(store_url)
    run_id = store.start_run(tmp_path / "run-a", {"rounds": 3}, 3, {"full zero-shot": 41.5}, {"hash": "ab"})
    store.round_started(run_id, 1, [10**18, 10**18 + 1])
    assert store.get_run(run_id)["active_nodes"] == [str(10**18), str(10**18 + 1)]
    store.record_round(run_id, make_entry(1, failed=(7,)))
    store.record_round(run_id, make_entry(2, epsilon=1.25))
    store.record_round(run_id, make_entry(2, epsilon=1.5))  # written again (resume): replaced, not doubled
    store.finish_run(run_id, {"five_numbers": {"plug-in": 50.0}, "rounds": ["dropped"], "config": {}})

    run = store.get_run(run_id)
    assert run["status"] == "finished" and run["current_round"] == 2 and run["active_nodes"] is None
    assert run["baseline"] == {"full zero-shot": 41.5} and run["report"] == {
        "five_numbers": {"plug-in": 50.0}
    }
    rows = store.rounds(run_id)
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[0]["epsilon"] is None and rows[1]["epsilon"] == 1.5  # DP off in round 1
    assert (rows[0]["replies"], rows[0]["failures"], rows[0]["clients"]) == (7, 1, 8)
    assert rows[0]["bytes_down"] == 8 * 13_000_000 and rows[0]["bytes_up"] == 7 * 3_500_000
    assert rows[1]["plugin_acc"] == 50.0 and rows[1]["train_loss"] == 1.0
    clients = store.client_rounds(run_id)
    assert len(clients) == 16
    timeout = next(c for c in clients if c["status"] == "timeout")
    assert timeout["reason"] == "no reply in 60 s" and timeout["bytes_up"] == 0 and timeout["loss"] is None
    ok = next(c for c in clients if c["round"] == 1 and c["node"] == str(10**18))
    assert ok["num_examples"] == 48 and ok["standin_sent"] and ok["peak_mem_mb"] == 900.0
    kinds = [e["kind"] for e in store.events(run_id)]
    assert kinds == ["finished", "round", "round", "round", "started"]
    assert [r["id"] for r in store.list_runs()] == [run_id]


def test_resumed_run_reopens_its_row_and_backfills_missed_rounds(store_url, tmp_path):
    """A crash after the checkpoint but before the store write: resume writes the round."""
    store = RunStore(store_url)
    rec = RunRecorder(store, rounds_planned=3)
    rec.run_started(tmp_path / "run", {"rounds": 3}, {}, {}, [])
    rec.round_finished(make_entry(1))
    rec.run_failed(RuntimeError("killed"))
    assert store.get_run(rec.run_id)["status"] == "failed"
    again = RunRecorder(store, rounds_planned=3)
    again.run_started(tmp_path / "run", {"rounds": 3}, {}, {}, [make_entry(1), make_entry(2)])
    assert again.run_id == rec.run_id and len(store.list_runs()) == 1
    run = store.get_run(rec.run_id)
    assert run["status"] == "running" and run["error"] is None
    assert [r["round"] for r in store.rounds(rec.run_id)] == [1, 2]
    assert [e["kind"] for e in store.events(rec.run_id)][:2] == ["round", "resumed"]
    again.run_finished({})


def test_two_runs_writing_at_once_lose_nothing(store_url, tmp_path):
    url = store_url
    RunStore(url).close()
    start_at = f"{time.time() + 3.0}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.ops.store_writer", url, str(tmp_path / name), "25"],
            cwd=ROOT,
            env={**os.environ, "START_AT": start_at, "PAUSE_S": "0.02"},
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("run-a", "run-b")
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    store = RunStore(url)
    runs = store.list_runs()
    assert sorted(r["name"] for r in runs) == ["run-a", "run-b"]
    for r in runs:
        assert r["status"] == "finished" and r["current_round"] == 25
        assert [x["round"] for x in store.rounds(r["id"])] == list(range(1, 26))
        assert [x["epsilon"] for x in store.rounds(r["id"])] == [0.5 * k for k in range(1, 26)]
        assert len(store.client_rounds(r["id"])) == 25 * 8
        assert len(store.events(r["id"])) == 25 + 2
    # The two writers really overlapped: their round timestamps interleave.
    a, b = (store.rounds(r["id"]) for r in runs)
    assert max(x["recorded_at"] for x in a) > min(x["recorded_at"] for x in b)
    assert max(x["recorded_at"] for x in b) > min(x["recorded_at"] for x in a)


def test_crash_mid_round_keeps_finished_rounds_and_drops_the_half_written_one(store_url, tmp_path):
    url = store_url
    proc = subprocess.run(
        [sys.executable, "-m", "tests.ops.store_writer", url, str(tmp_path / "run"), "3", "--crash"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr  # killed by SIGKILL inside round 4's transaction
    store = RunStore(url)
    (run,) = store.list_runs()
    assert run["status"] == "running" and run["current_round"] == 3
    assert [r["round"] for r in store.rounds(run["id"])] == [1, 2, 3]
    assert sorted({c["round"] for c in store.client_rounds(run["id"])}) == [1, 2, 3]
    assert len(store.client_rounds(run["id"])) == 3 * 8


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "not a database URL"),
        ("sqlite://", "SQLite *file*"),
        ("sqlite:///:memory:", "SQLite *file*"),
        ("nosuchdb://host/db", "no database driver"),
        ("postgresql+nosuchdriver://u:secret@host/db", "no database driver"),
    ],
)
def test_bad_store_url_is_a_clear_error(url, message):
    with pytest.raises(StoreError, match=message.replace("*", r"\*")) as err:
        RunStore(url)
    assert "secret" not in str(err.value)  # passwords are masked in errors
    with pytest.raises(ConfigError, match="store-url"):
        FederationConfig.from_run_config({"store-url": url})


def test_store_url_and_metrics_port_config():
    assert store_url_for("", "/srv/runs") == "sqlite:////srv/runs/offsite.db"
    assert store_url_for("none", "/srv/runs") is None
    assert store_url_for("sqlite:////db/x.db", "/srv/runs") == "sqlite:////db/x.db"
    cfg = FederationConfig.from_run_config({"store-url": "sqlite:////tmp/x.db", "metrics-port": 9100})
    assert cfg.store_url == "sqlite:////tmp/x.db" and cfg.metrics_port == 9100
    with pytest.raises(ConfigError, match="metrics-port"):
        FederationConfig.from_run_config({"metrics-port": 70000})
