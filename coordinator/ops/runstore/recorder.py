"""The observer that writes a run into a `RunStore`: one row per run, round, client and event.

While the run goes on, a heartbeat thread touches the run's row a few times per round-timeout, so
the dashboard can tell a run whose coordinator died without a word (SIGKILL, power loss) from a
slow round: the first goes stale once its row is older than the round-timeout. A run still going
when the interpreter exits normally (e.g. sys.exit from another thread) is marked stopped on the
way out; a process ended by os._exit or a signal's default action can only go stale.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from coordinator.ops.observers import RunObserver
from coordinator.ops.runstore.store import RunStore, public_url, stale_after_s

log = logging.getLogger("offsite.coordinator")

BEATS_PER_TIMEOUT = 4  # heartbeats per round-timeout: a live run never comes near stale
MAX_BEAT_S = 30.0


class Heartbeat:
    """Calls `beat` every `every_s` seconds in a daemon thread until stopped; failures are logged."""

    def __init__(self, beat: Callable[[], None], every_s: float):
        self.beat, self.every_s = beat, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="offsite-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        """Start beating; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and wait for the thread (a beat under way finishes first)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - a store hiccup must not end the heartbeat (or the run)
                log.warning("run-store heartbeat failed; retrying in %.0f s", self.every_s, exc_info=True)


def beat_interval_s(config: dict) -> float:
    """Seconds between heartbeats for a run config: a quarter of its round-timeout, at most 30 s."""
    return min(MAX_BEAT_S, max(0.25, stale_after_s(config) / BEATS_PER_TIMEOUT))


def stop_reason(error: BaseException) -> str | None:
    """Why an exception stopped (rather than failed) a run: a signal or Ctrl-C; None for a failure."""
    reason = getattr(error, "stop_reason", None)
    if reason:
        return str(reason)
    return "interrupted (KeyboardInterrupt)" if isinstance(error, KeyboardInterrupt) else None


class RunRecorder(RunObserver):
    """Writes a run into a `RunStore`: one row per run, round, client and event."""

    def __init__(self, store: RunStore, rounds_planned: int):
        self.store = store
        self.rounds_planned = rounds_planned
        self.run_id: int | None = None
        self.last_round = 0
        self.active_round: int | None = None
        self._heartbeat: Heartbeat | None = None

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
        self.last_round = max((e["round"] for e in history), default=0)
        run_id = self.run_id
        self._heartbeat = Heartbeat(lambda: self.store.heartbeat(run_id), beat_interval_s(config)).start()
        atexit.register(self._at_exit)

    def round_started(self, rnd: int, nodes: list[int]) -> None:
        """Show the round's nodes as training."""
        self.active_round = rnd
        if self.run_id is not None:
            self.store.round_started(self.run_id, rnd, nodes)

    def round_finished(self, entry: dict) -> None:
        """Write the round and its clients in one transaction."""
        self.last_round, self.active_round = entry["round"], None
        if self.run_id is not None:
            self.store.record_round(self.run_id, entry)

    def run_stopped(self, rnd: int) -> None:
        """Mark the run stopped."""
        self._stop_heartbeat()
        if self.run_id is not None:
            self.store.stop_run(self.run_id, rnd)

    def run_finished(self, report: dict) -> None:
        """Mark the run finished with its report."""
        self._stop_heartbeat()
        if self.run_id is not None:
            self.store.finish_run(self.run_id, report)

    def run_failed(self, error: BaseException) -> None:
        """Mark the run failed; or stopped, with the reason, when a signal or Ctrl-C ended it."""
        self._stop_heartbeat()
        if self.run_id is None:
            return
        reason = stop_reason(error)
        if reason is None:
            self.store.fail_run(self.run_id, f"{type(error).__name__}: {error}")
            return
        during = f" during round {self.active_round}" if self.active_round else ""
        self.store.stop_run(self.run_id, self.last_round, reason=f"{reason}{during}")

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
            atexit.unregister(self._at_exit)

    def _at_exit(self) -> None:
        try:
            self.run_failed(ProcessExit())
        except Exception:  # noqa: BLE001 - the store may be gone too; the run then goes stale
            log.warning("could not mark the run stopped on exit", exc_info=True)


class ProcessExit(BaseException):
    """The interpreter exits while a run goes on."""

    stop_reason = "coordinator process exited"
