"""Run observers: what the round loop tells the run store, the metrics endpoint and the like.

The round loop calls one `Observers` object at a few points of a run. Observers are side channels
for operators: an observer that fails is logged and the run goes on, because the checkpoint (not
the store) is what a resumed run trusts, and a resumed run re-records any round the store missed.
This module imports nothing else of `coordinator.ops`, so every observer can build on it.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("offsite.coordinator")


class RunObserver:
    """Base class: every hook is a no-op; override the ones you need."""

    def run_started(
        self, run_dir: Path, config: dict, baseline: dict, standin: dict, history: list[dict]
    ) -> None:
        """The run (or its resumption) has its stand-in and baseline; `history` holds finished rounds."""

    def round_started(self, rnd: int, nodes: list[int]) -> None:
        """Round `rnd` sent its train messages to `nodes`."""

    def round_finished(self, entry: dict) -> None:
        """Round finished and checkpointed; `entry` is its history entry (coordinator.federation.loop)."""

    def run_stopped(self, rnd: int) -> None:
        """The run stopped after round `rnd` on purpose (stop-after); resume continues it."""

    def run_finished(self, report: dict) -> None:
        """The run wrote its report."""

    def run_failed(self, error: BaseException) -> None:
        """The run raised `error`."""


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
