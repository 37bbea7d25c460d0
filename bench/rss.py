"""Resident memory of a whole process tree (this process and every descendant, e.g. Ray workers)."""

from __future__ import annotations

import threading
import time

import psutil


def tree_rss_bytes(root: psutil.Process | None = None) -> int:
    """Sum of RSS over `root` (default: this process) and all its live descendants, in bytes."""
    root = root or psutil.Process()
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # a worker that exits between listing and reading is simply gone
    return total


def tree_pss_bytes(root: psutil.Process | None = None) -> int:
    """Proportional set size over the tree: shared pages (Ray's object store, libraries) counted once."""
    root = root or psutil.Process()
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def rss_mb() -> float:
    """This process's current RSS in MiB."""
    return psutil.Process().memory_info().rss / 2**20


class TreeRssSampler:
    """Samples the process tree's RSS every `interval` seconds in a thread: `with TreeRssSampler() as s:`."""

    def __init__(self, interval: float = 0.5, pss: bool = False):
        self.interval = interval
        self.pss = pss
        self.samples: list[tuple[float, int]] = []  # (time.time() seconds, bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        root = psutil.Process()
        while not self._stop.is_set():
            measure = tree_pss_bytes if self.pss else tree_rss_bytes
            self.samples.append((time.time(), measure(root)))
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeRssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peak_mb(self, start: float = float("-inf"), end: float = float("inf")) -> float | None:
        """Peak tree memory in MiB among samples taken in [start, end] (time.time() seconds)."""
        inside = [b for t, b in self.samples if start <= t <= end]
        return max(inside) / 2**20 if inside else None
