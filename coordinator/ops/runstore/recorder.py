"""The observer that writes a run into a `RunStore`: one row per run, round, client and event."""

from __future__ import annotations

from pathlib import Path

from coordinator.ops.observers import RunObserver
from coordinator.ops.runstore.store import RunStore, public_url


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
