"""A real (in-process) federated run recorded in the run store and exported to Prometheus."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from client.client_app import app as client_app
from coordinator.config import FederationConfig
from coordinator.federation.inprocess_grid import InProcessGrid
from coordinator.federation.loop import run_federation
from coordinator.ops.observers import RunObserver
from coordinator.ops.runstore import RunStore, default_store_url


class Trace(RunObserver):
    """Keeps the hooks' order, to check what the round loop calls and when."""

    def __init__(self):
        self.calls: list[tuple] = []

    def run_started(self, run_dir, config, baseline, standin, history):
        self.calls.append(("run_started", len(history)))

    def round_started(self, rnd, nodes):
        self.calls.append(("round_started", rnd, len(nodes)))

    def round_finished(self, entry):
        self.calls.append(("round_finished", entry["round"]))

    def run_stopped(self, rnd):
        self.calls.append(("run_stopped", rnd))

    def run_finished(self, report):
        self.calls.append(("run_finished",))


class Broken(RunObserver):
    """An observer that always fails: the run must go on regardless."""

    def round_finished(self, entry):
        raise RuntimeError("dashboard database is down")


def _run(overrides: dict, tmp_path, observers=()):
    cfg = FederationConfig.from_run_config(overrides)
    nodes = {
        1000 + i: {"partition-id": i, "num-partitions": 2, "cache-dir": str(tmp_path / "cache")}
        for i in range(2)
    }
    grid = InProcessGrid(client_app, nodes, cfg.to_run_config())
    return run_federation(grid, cfg, observers=list(observers))


def _samples(text: str) -> dict[tuple, float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_stopped_then_resumed_run_is_recorded_and_exported(ops_run, tmp_path, free_port):
    trace = Trace()
    assert _run({**ops_run, "stop-after": 1, "metrics-port": free_port}, tmp_path, [trace, Broken()]) is None
    assert trace.calls == [
        ("run_started", 0),
        ("round_started", 1, 2),
        ("round_finished", 1),
        ("run_stopped", 1),
    ]
    store = RunStore(default_store_url(ops_run["out-dir"]))
    (run,) = store.list_runs()
    assert run["status"] == "stopped" and run["current_round"] == 1 and run["name"] == "r"

    report = _run({**ops_run, "resume": True, "metrics-port": free_port}, tmp_path, [trace])
    assert trace.calls[4:] == [
        ("run_started", 1),
        ("round_started", 2, 2),
        ("round_finished", 2),
        ("run_finished",),
    ]
    run = store.get_run(run["id"])
    assert run["status"] == "finished" and run["current_round"] == 2
    assert run["report"]["five_numbers"] == report["five_numbers"]
    assert run["baseline"]["full zero-shot"] == report["five_numbers"]["full zero-shot"]
    assert run["standin"]["layout"] == report["standin"]["layout"]
    rounds = store.rounds(run["id"])
    assert [r["round"] for r in rounds] == [1, 2]
    assert [r["plugin_acc"] for r in rounds] == [h["plug-in"] for h in report["rounds"]]
    assert all(r["epsilon"] is None for r in rounds)  # DP off
    clients = store.client_rounds(run["id"])
    assert len(clients) == 4 and all(c["status"] == "ok" and c["bytes_up"] > 0 for c in clients)
    assert sum(c["bytes_down"] for c in clients) == report["bytes"]["total_down"]
    assert [e["kind"] for e in store.events(run["id"])] == [
        "finished",
        "round",
        "resumed",
        "stopped",
        "round",
        "started",
    ]

    # Prometheus: both halves of the run, scraped from the coordinator's endpoint.
    text = httpx.get(f"http://127.0.0.1:{free_port}/metrics", timeout=10).text
    m = _samples(text)
    run_label = (("run", "r"),)
    assert m[("offsite_rounds_total", run_label)] == 2
    assert m[("offsite_round", run_label)] == 2
    assert m[("offsite_runs_started_total", run_label)] == 2
    assert m[("offsite_run_active", run_label)] == 0
    assert m[("offsite_client_replies_total", (("run", "r"), ("status", "ok")))] == 4
    assert m[("offsite_client_failures_total", run_label)] == 0
    assert m[("offsite_bytes_total", (("direction", "down"), ("run", "r")))] == report["bytes"]["total_down"]
    assert m[("offsite_bytes_total", (("direction", "up"), ("run", "r")))] == report["bytes"]["total_up"]
    assert m[("offsite_round_duration_seconds_count", run_label)] == 2
    assert (
        m[("offsite_accuracy_percent", (("model", "plug-in"), ("run", "r")))]
        == report["five_numbers"]["plug-in"]
    )
    assert not any(name == "offsite_dp_epsilon" for name, _ in m)  # DP off: no ε series
