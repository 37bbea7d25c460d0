"""A separate process that writes a run into a store: `python -m tests.ops.store_writer URL DIR ROUNDS [--crash|--hold]`.

Used by the concurrency test (two of these at once), the crash test (`--crash`: after the
finished rounds, start writing one more round and die with SIGKILL in the middle of it) and the
staleness test (`--hold`: a coordinator's RunRecorder, heartbeat included, that records its rounds,
starts one more and waits there, with round-timeout ROUND_TIMEOUT_S, for the test to kill it;
`--exit`: the same, but it leaves with sys.exit(0) instead of waiting).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from sqlalchemy import insert

from coordinator.ops.runstore.recorder import RunRecorder
from coordinator.ops.runstore.store import RunStore, client_row, round_row
from coordinator.ops.runstore.tables import client_rounds, rounds
from tests.ops.entries import make_entry


def main(argv: list[str]) -> None:
    """Write ROUNDS rounds of 8 clients; with --crash, die half-way through round ROUNDS+1."""
    url, run_dir, n = argv[0], argv[1], int(argv[2])
    if "--hold" in argv or "--exit" in argv:
        hold(url, run_dir, n, leave="--exit" in argv)
        return
    start_at = float(os.environ.get("START_AT", "0"))
    pause = float(os.environ.get("PAUSE_S", "0"))
    store = RunStore(url)
    run_id = store.start_run(run_dir, {"rounds": n + 1}, n + 1, {"full zero-shot": 40.0}, {"hash": "x"})
    while time.time() < start_at:  # both writers start together
        time.sleep(0.005)
    for rnd in range(1, n + 1):
        store.round_started(run_id, rnd, list(range(8)))
        store.record_round(run_id, make_entry(rnd, epsilon=0.5 * rnd))
        time.sleep(pause)  # a round's worth of work, so the two writers' rounds interleave
    if "--crash" in argv:
        entry = make_entry(n + 1)
        with store._write() as conn:
            conn.execute(insert(rounds).values(run_id=run_id, recorded_at=time.time(), **round_row(entry)))
            conn.execute(
                insert(client_rounds),
                [{"run_id": run_id, **client_row(n + 1, c)} for c in entry["clients"][:3]],
            )
            os.kill(os.getpid(), signal.SIGKILL)
    store.finish_run(run_id, {"five_numbers": {"plug-in": 50.0}})


def hold(url: str, run_dir: str, n: int, leave: bool = False) -> None:
    """Record n rounds through a RunRecorder, start round n+1, say "holding" and wait to be killed (or exit)."""
    config = {"rounds": n + 1, "round-timeout": float(os.environ.get("ROUND_TIMEOUT_S", "2"))}
    rec = RunRecorder(RunStore(url), n + 1)
    rec.run_started(Path(run_dir), config, {"full zero-shot": 40.0}, {"hash": "x"}, [])
    for rnd in range(1, n + 1):
        rec.round_started(rnd, list(range(8)))
        rec.round_finished(make_entry(rnd))
    rec.round_started(n + 1, list(range(8)))
    print("holding", flush=True)
    if leave:
        sys.exit(0)
    time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1:])
