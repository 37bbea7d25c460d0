"""Prometheus metrics of the coordinator: rounds, replies, failures, bytes, durations, ε, accuracy.

Set run-config `metrics-port` (0: off) and scrape `http://COORDINATOR:PORT/metrics`. Every series
carries a `run` label (the run directory's name). deploy/prometheus and deploy/grafana hold a
scrape config and a dashboard for these names.
"""

from __future__ import annotations

import threading
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from coordinator.ops.observers import RunObserver
from coordinator.ops.runstore.store import epsilon_of

ROUND_BUCKETS_S = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class OffsiteMetrics:
    """The metric families, registered in one registry (the process default unless given)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY):
        self.registry = registry
        run = ["run"]
        self.runs = Counter("offsite_runs_started", "Runs started or resumed.", run, registry=registry)
        self.run_active = Gauge(
            "offsite_run_active", "1 while the run is going on, else 0.", run, registry=registry
        )
        self.rounds = Counter("offsite_rounds", "Rounds finished.", run, registry=registry)
        self.round = Gauge("offsite_round", "Last finished round.", run, registry=registry)
        self.rounds_planned = Gauge(
            "offsite_rounds_planned", "Rounds the run will do.", run, registry=registry
        )
        self.round_duration = Histogram(
            "offsite_round_duration_seconds",
            "Wall time of a round (train, aggregate, evaluate).",
            run,
            buckets=ROUND_BUCKETS_S,
            registry=registry,
        )
        self.train_duration = Histogram(
            "offsite_round_train_seconds",
            "Time from sending train messages to the last reply.",
            run,
            buckets=ROUND_BUCKETS_S,
            registry=registry,
        )
        self.replies = Counter(
            "offsite_client_replies",
            "Client outcomes per round by status (ok, dropped, failed, timeout).",
            ["run", "status"],
            registry=registry,
        )
        self.failures = Counter(
            "offsite_client_failures", "Client rounds that gave no usable update.", run, registry=registry
        )
        self.bytes = Counter(
            "offsite_bytes",
            "Message bytes to (down) and from (up) clients.",
            ["run", "direction"],
            registry=registry,
        )
        self.epsilon = Gauge(
            "offsite_dp_epsilon", "Privacy budget spent so far (only while DP is on).", run, registry=registry
        )
        self.accuracy = Gauge(
            "offsite_accuracy_percent",
            "Server-side accuracy after the last round: plug-in and emulator FT; baselines.",
            ["run", "model"],
            registry=registry,
        )
        self.train_loss = Gauge(
            "offsite_train_loss",
            "Example-weighted client training loss of the last round.",
            run,
            registry=registry,
        )


_default: OffsiteMetrics | None = None
_servers: dict[int, object] = {}
_lock = threading.Lock()


def default_metrics() -> OffsiteMetrics:
    """The process-wide metric families (created once)."""
    global _default
    with _lock:
        if _default is None:
            _default = OffsiteMetrics()
        return _default


def serve_metrics(port: int, addr: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY) -> int:
    """Serve /metrics on `port` in a daemon thread, once per process and port; return the bound port."""
    if not 0 < port < 65536:
        raise ValueError(f"metrics port must be in 1..65535; got {port}")
    with _lock:
        if port not in _servers:
            server, _thread = start_http_server(port, addr=addr, registry=registry)
            _servers[port] = server
        return _servers[port].server_port  # type: ignore[attr-defined]


class MetricsObserver(RunObserver):
    """Updates the metric families from the round loop's hooks."""

    def __init__(self, metrics: OffsiteMetrics | None = None):
        self.m = metrics or default_metrics()
        self.run = "unknown"

    def run_started(
        self, run_dir: Path, config: dict, baseline: dict, standin: dict, history: list[dict]
    ) -> None:
        """Label the series with the run's name; set baselines and the planned rounds."""
        self.run = Path(run_dir).name
        self.m.runs.labels(self.run).inc()
        self.m.run_active.labels(self.run).set(1)
        self.m.rounds_planned.labels(self.run).set(config.get("rounds", 0))
        # Create the counters at 0 so a run with no failures yet still exports the series.
        self.m.rounds.labels(self.run)
        self.m.failures.labels(self.run)
        for direction in ("down", "up"):
            self.m.bytes.labels(self.run, direction)
        for name, key in (("full-zero-shot", "full zero-shot"), ("emulator-zero-shot", "emulator zero-shot")):
            if isinstance(baseline.get(key), int | float):
                self.m.accuracy.labels(self.run, name).set(baseline[key])
        if history:
            self.m.round.labels(self.run).set(history[-1]["round"])

    def round_finished(self, entry: dict) -> None:
        """Count the round, its client outcomes and bytes; set accuracy, loss and ε."""
        r = self.run
        self.m.rounds.labels(r).inc()
        self.m.round.labels(r).set(entry["round"])
        if isinstance(entry.get("wall_s"), int | float):
            self.m.round_duration.labels(r).observe(entry["wall_s"])
        if isinstance(entry.get("train_s"), int | float):
            self.m.train_duration.labels(r).observe(entry["train_s"])
        for c in entry.get("clients") or []:
            status = c.get("status", "ok")
            self.m.replies.labels(r, status).inc()
            if status != "ok":
                self.m.failures.labels(r).inc()
            self.m.bytes.labels(r, "down").inc(c.get("bytes_down", 0))
            self.m.bytes.labels(r, "up").inc(c.get("bytes_up", 0))
        for name, key in (("plug-in", "plug-in"), ("emulator-ft", "emulator FT")):
            if isinstance(entry.get(key), int | float):
                self.m.accuracy.labels(r, name).set(entry[key])
        loss = (entry.get("train") or {}).get("train-loss")
        if isinstance(loss, int | float):
            self.m.train_loss.labels(r).set(loss)
        eps = epsilon_of(entry)
        if eps is not None:
            self.m.epsilon.labels(r).set(eps)

    def run_stopped(self, rnd: int) -> None:
        """The run is no longer active."""
        self.m.run_active.labels(self.run).set(0)

    def run_finished(self, report: dict) -> None:
        """The run is no longer active."""
        self.m.run_active.labels(self.run).set(0)

    def run_failed(self, error: BaseException) -> None:
        """The run is no longer active."""
        self.m.run_active.labels(self.run).set(0)
