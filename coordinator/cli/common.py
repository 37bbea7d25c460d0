"""What every `offsite` command shares: the consoles, progress display and the plain-words error exit."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

# Piped into a file, rich would wrap every line and cut table cells at 80 columns: give it room instead.
_WIDE = 10_000
console = Console()
err_console = Console(stderr=True)
for _c in (console, err_console):
    if not _c.is_terminal:
        _c.width = _WIDE
        _c.soft_wrap = True

PLAIN_EVERY_S = 5.0


class PlainProgress:
    """Progress as plain log lines ('stage: 12/100 steps, 34 s') every few seconds, for logs and pipes.

    A background thread prints them, so a long step that reports nothing (one model call) still shows
    it is alive.
    """

    def __init__(self, out: Console, every_s: float = PLAIN_EVERY_S) -> None:
        self.console = out
        self.every_s = every_s
        self._tasks: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True)

    def __enter__(self) -> PlainProgress:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        with self._lock:
            for task_id in self._tasks:
                self._emit(task_id, final=True)

    def _tick(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(min(1.0, self.every_s)):
            if time.monotonic() - last < self.every_s:
                continue
            last = time.monotonic()
            with self._lock:
                changed = [t for t, task in self._tasks.items() if self._state(task) != task["shown"]]
                # Nothing moved: one line for the first unfinished task says the command is alive.
                unfinished = [
                    t for t, task in self._tasks.items() if task["completed"] < (task["total"] or 0)
                ]
                for task_id in changed or unfinished[:1] or list(self._tasks)[:1]:
                    self._emit(task_id)

    @staticmethod
    def _state(task: dict) -> tuple:
        return task["completed"], task["total"], task["fields"].get("info", "")

    def add_task(self, description: str, total: float | None = 1, **fields: Any) -> int:
        """Start following a task; returns its id."""
        now = time.monotonic()
        with self._lock:
            task_id = len(self._tasks)
            self._tasks[task_id] = {"description": description, "total": total, "completed": 0.0,
                                    "fields": dict(fields), "start": now, "last": now, "shown": None}  # fmt: skip
        return task_id

    def update(
        self,
        task_id: int,
        *,
        completed: float | None = None,
        advance: float | None = None,
        total: float | None = None,
        **fields: Any,
    ) -> None:
        """Change a task; the thread prints it within `every_s`."""
        with self._lock:
            task = self._tasks[task_id]
            if total is not None:
                task["total"] = total
            if completed is not None:
                task["completed"] = completed
            if advance:
                task["completed"] += advance
            task["fields"].update(fields)

    def advance(self, task_id: int, advance: float = 1) -> None:
        """Advance a task by `advance` units."""
        self.update(task_id, advance=advance)

    def _emit(self, task_id: int, final: bool = False) -> None:
        task = self._tasks[task_id]
        state = self._state(task)
        if final and state == task["shown"]:
            return
        task["last"] = time.monotonic()
        task["shown"] = state
        done, total, info = state
        amount = f"{done:.0f}/{total:.0f}" if total else f"{done:.0f}"
        info = f" {info}" if info else ""
        elapsed = task["last"] - task["start"]
        self.console.print(f"{task['description'].strip()}: {amount}{info}, {elapsed:.0f} s", highlight=False)


def progress() -> Progress | PlainProgress:
    """A rich progress bar in a terminal; plain timed lines when output goes to a file or a pipe."""
    if not console.is_terminal:
        return PlainProgress(console)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    )


@contextmanager
def status(message: str):
    """A spinner in a terminal; one plain line (and the time taken) otherwise."""
    if console.is_terminal:
        with console.status(message):
            yield
        return
    start = time.monotonic()
    console.print(f"{message} ...", highlight=False)
    yield
    console.print(f"{message}: done, {time.monotonic() - start:.0f} s", highlight=False)


def fail(message: str, code: int = 2) -> None:
    """Print a user error in plain words to stderr and exit with `code` (2: bad input; no traceback)."""
    # A Text, not markup: messages quote user input and paths, where '[...]' must print as typed.
    err_console.print(Text.assemble(("Error:", "red"), " ", message), highlight=False)
    raise typer.Exit(code)


def check_range(name: str, value: float, low: float | None = None, high: float | None = None) -> None:
    """Refuse `value` outside [low, high] with a message naming the option."""
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"<= {high}" if low is None else f"in {low}..{high}"
        fail(f"{name} must be {bounds}; got {value}")


def interval(percent: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson 95% interval, in percent, of an accuracy of `percent` % measured on `n` examples."""
    p = percent / 100
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)
