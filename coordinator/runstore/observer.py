"""Run observers: what the round loop tells the run store, the metrics endpoint and the like.

`coordinator.federation` calls one `Observers` object at a few points of a run. Observers are
side channels for operators: an observer that fails is logged and the run goes on, because the
checkpoint (not the store) is what a resumed run trusts, and a resumed run re-records any round
the store missed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from coordinator.runstore.store import RunStore, StoreError, default_store_url, public_url

log = logging.getLogger("offsite.coordinator")

STORE_OFF = "none"


class RunObserver:
    """Base class: every hook is a no-op; override the ones you need."""

    def run_started(
        self, run_dir: Path, config: dict, baseline: dict, standin: dict, history: list[dict]
    ) -> None:
        """The run (or its resumption) has its stand-in and baseline; `history` holds finished rounds."""

    def round_started(self, rnd: int, nodes: list[int]) -> None:
        """Round `rnd` sent its train messages to `nodes`."""

    def round_finished(self, entry: dict) -> None:
        """Round finished and checkpointed; `entry` is its history entry (coordinator.federation)."""

    def run_stopped(self, rnd: int) -> None:
        """The run stopped after round `rnd` on purpose (stop-after); resume continues it."""

    def run_finished(self, report: dict) -> None:
        """The run wrote its report."""

    def run_failed(self, error: BaseException) -> None:
        """The run raised `error`."""


class RunRecorder(RunObserver):
    """Writes a run into a `RunStore`: one row per run, round, client and event."""

    def __init__(self, store: RunStore, rounds_planned: int):
        self.store = store
        self.rounds_planned = rounds_planned
        self.run_id: int | None = None

    def run_started(
        self, run_dir: Path, config: dict, baseline: dict, standin: dict, history: list[dict]
    ) -> None:
        """Register the run and write any checkpointed round the store lacks (after a crash)."""
        shown = dict(config)
        if shown.get("store-url"):
            shown["store-url"] = public_url(shown["store-url"])
        self.run_id = self.store.start_run(run_dir, shown, self.rounds_planned, baseline, standin)
        have = {r["round"] for r in self.store.rounds(self.run_id)}
        for entry in history:
            if entry["round"] not in have:
                self.store.record_round(self.run_id, entry)

    def round_started(self, rnd: int, nodes: list[int]) -> None:
        """Show the round's nodes as training."""
        if self.run_id is not None:
            self.store.round_started(self.run_id, rnd, nodes)

    def round_finished(self, entry: dict) -> None:
        """Write the round and its clients in one transaction."""
        if self.run_id is not None:
            self.store.record_round(self.run_id, entry)

    def run_stopped(self, rnd: int) -> None:
        """Mark the run stopped."""
        if self.run_id is not None:
            self.store.stop_run(self.run_id, rnd)

    def run_finished(self, report: dict) -> None:
        """Mark the run finished with its report."""
        if self.run_id is not None:
            self.store.finish_run(self.run_id, report)

    def run_failed(self, error: BaseException) -> None:
        """Mark the run failed."""
        if self.run_id is not None:
            self.store.fail_run(self.run_id, f"{type(error).__name__}: {error}")


class Observers(RunObserver):
    """Fans every hook out to several observers; a failing observer is logged, never raised."""

    def __init__(self, observers: list[RunObserver] | None = None):
        self.observers = list(observers or [])

    def _each(self, hook: str, *args) -> None:
        for obs in self.observers:
            try:
                getattr(obs, hook)(*args)
            except Exception:  # noqa: BLE001 - see the module docstring
                log.warning("%s.%s failed; the run goes on", type(obs).__name__, hook, exc_info=True)

    def run_started(self, run_dir, config, baseline, standin, history) -> None:
        """Fan out run_started."""
        self._each("run_started", run_dir, config, baseline, standin, history)

    def round_started(self, rnd, nodes) -> None:
        """Fan out round_started."""
        self._each("round_started", rnd, nodes)

    def round_finished(self, entry) -> None:
        """Fan out round_finished."""
        self._each("round_finished", entry)

    def run_stopped(self, rnd) -> None:
        """Fan out run_stopped."""
        self._each("run_stopped", rnd)

    def run_finished(self, report) -> None:
        """Fan out run_finished."""
        self._each("run_finished", report)

    def run_failed(self, error) -> None:
        """Fan out run_failed."""
        self._each("run_failed", error)


def store_url_for(store_url: str, out_dir: str | Path) -> str | None:
    """The run-config `store-url` resolved: '' → SQLite under out-dir, 'none' → None (no store)."""
    if store_url.strip().lower() == STORE_OFF:
        return None
    return store_url or default_store_url(out_dir)


def observers_for(store_url: str, out_dir: str | Path, rounds: int, metrics_port: int = 0) -> Observers:
    """The observers a run config asks for: the run store unless 'none', metrics if a port is set."""
    found: list[RunObserver] = []
    url = store_url_for(store_url, out_dir)
    if url is not None:
        try:
            found.append(RunRecorder(RunStore(url), rounds))
            log.info("run store %s", public_url(url))
        except StoreError:
            raise
        except Exception:  # noqa: BLE001 - an unreachable store must not stop the training run
            log.warning("run store %s unavailable; this run is not recorded", public_url(url), exc_info=True)
    if metrics_port:
        from coordinator.metrics import MetricsObserver, serve_metrics

        serve_metrics(metrics_port)
        found.append(MetricsObserver())
        log.info("Prometheus metrics on :%d/metrics", metrics_port)
    return Observers(found)
