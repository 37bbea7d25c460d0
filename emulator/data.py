"""Task data: the embedded tasks and users' JSONL/CSV/Parquet files, validated record by record.

Two task kinds:
- "mc": {"prompt", "choices": [str, ...], "answer": int}, scored by log-likelihood of each choice;
- "gen": {"prompt", "target": str}, scored by exact match of the greedy continuation.
An optional "label" column drives non-IID partitioning (defaults to the answer text).
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, replace
from pathlib import Path

from datasets import Dataset

from emulator.benchmarks.specs import BENCHMARKS, is_benchmark
from emulator.zoo.specs import TASKS_DIR


class DataError(ValueError):
    """A data file or record is malformed; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    """One task example (mc: choices+answer; gen: target)."""

    prompt: str
    choices: tuple[str, ...] | None = None
    answer: int | None = None
    target: str | None = None
    label: str = ""
    metric: str | None = None  # the task's metric when it is not the kind's default (a benchmark's acc_norm)

    @property
    def kind(self) -> str:
        """'mc' or 'gen'."""
        return "mc" if self.choices is not None else "gen"

    @property
    def response(self) -> str:
        """The text a tuned model should produce after the prompt."""
        return self.choices[self.answer] if self.kind == "mc" else self.target


EMBEDDED_TASKS = {
    "wn-category": "mc",  # which WordNet category a noun's definition belongs to (4 options)
    "wn-pos": "gen",  # generate the part of speech of a definition's headword
}


def parse_record(rec: object, where: str) -> Example:
    """Validate one raw record and turn it into an Example; `where` is 'file:line' for errors."""
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected an object with a 'prompt', got {type(rec).__name__}")
    prompt = rec.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise DataError(f"{where}: 'prompt' must be a non-empty string")
    if "choices" in rec and rec["choices"] not in (None, ""):
        choices = rec["choices"]
        if isinstance(choices, str):
            try:
                choices = json.loads(choices)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: 'choices' is not a JSON list ({exc.msg})") from None
        if (
            not isinstance(choices, list)
            or len(choices) < 2
            or not all(isinstance(c, str) and c for c in choices)
        ):
            raise DataError(f"{where}: 'choices' must be a list of at least 2 non-empty strings")
        answer = rec.get("answer")
        try:
            answer = int(answer)
        except (TypeError, ValueError):
            raise DataError(f"{where}: 'answer' must be an integer index into 'choices'") from None
        if not 0 <= answer < len(choices):
            raise DataError(f"{where}: 'answer' {answer} is out of range for {len(choices)} choices")
        label = str(rec.get("label") or choices[answer].strip())
        return Example(prompt, tuple(choices), answer, None, label)
    target = rec.get("target")
    if not isinstance(target, str) or not target.strip():
        raise DataError(f"{where}: a record needs either 'choices' + 'answer' or a non-empty 'target'")
    return Example(prompt, None, None, target, str(rec.get("label") or target.strip()))


def _raw_records(path: Path) -> list[tuple[str, object]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        out = []
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    out.append((f"{path}:{n}", json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{n}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        return out
    if suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "prompt" not in reader.fieldnames:
                raise DataError(f"{path}:1: CSV header must include a 'prompt' column")
            rows = []
            for row in reader:
                if None in row:
                    raise DataError(f"{path}:{reader.line_num}: more fields than the header has")
                rows.append((f"{path}:{reader.line_num}", row))
            return rows
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise DataError(f"{path}: cannot read Parquet ({exc})") from None
        return [(f"{path}:row {i + 1}", r) for i, r in enumerate(table.to_pylist())]
    raise DataError(f"{path}: unsupported data format {suffix!r}; use .jsonl, .csv or .parquet")


def load_examples(path: str | Path) -> list[Example]:
    """Load and validate every record of a JSONL, CSV or Parquet file; all records share one kind."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such data file")
    examples = [parse_record(rec, where) for where, rec in _raw_records(path)]
    if not examples:
        raise DataError(f"{path}: no records")
    kinds = {e.kind for e in examples}
    if len(kinds) > 1:
        raise DataError(f"{path}: mixes multiple-choice and generation records")
    return examples


def task_names() -> list[str]:
    """Every task a name selects: the embedded WordNet tasks, then the benchmarks."""
    return [*EMBEDDED_TASKS, *BENCHMARKS]


def task_file(task: str, split: str) -> Path:
    """Path of an embedded task split ('train' or 'test'), or a user's file path as given."""
    if task in EMBEDDED_TASKS:
        return TASKS_DIR / f"{task}.{split}.jsonl"
    raise DataError(f"unknown task {task!r}; tasks are {', '.join(task_names())}, or pass a data file")


def task_metric(task: str) -> str | None:
    """The metric a task reports (acc_norm for most benchmarks); None: by its kind (acc or exact_match)."""
    return BENCHMARKS[task].metric if is_benchmark(task) else None


def task_split_note(task: str, n_train: int, n_test: int) -> str:
    """One sentence on where a task's train and test rows come from, for reports."""
    if is_benchmark(task):
        from emulator.benchmarks.specs import SPLIT_SEED

        spec = BENCHMARKS[task]
        return (
            f"{task}: {spec.n_train} train / {spec.n_test} test rows, split once (seed {SPLIT_SEED}) from the "
            f"{spec.rows} validation rows; {n_train} trained on, {n_test} scored; metric {spec.metric}"
        )
    return f"{task}: {n_train} train rows, {n_test} test rows scored"


def benchmark_examples(task: str, split: str) -> list[Example]:
    """A benchmark's train or test split, validated like any record (the wheel is installed if needed)."""
    from emulator.benchmarks import benchmark_records

    rows = benchmark_records(task, split)
    metric = BENCHMARKS[task].metric
    return [
        replace(parse_record(r, f"{task} {split} row {i + 1}"), metric=metric) for i, r in enumerate(rows)
    ]


# A user's task: 'train.jsonl' (a seeded share held out as the test split) or 'train.jsonl::test.jsonl'.
TEST_FILE_SEP = "::"
TEST_SHARE = 0.2
SPLIT_SEED = 0


def held_out_split(
    examples: list[Example], share: float = TEST_SHARE, seed: int = SPLIT_SEED
) -> tuple[list[Example], list[Example]]:
    """(train, test): a seeded random `share` of the examples held out for testing, the rest to train."""
    if len(examples) < 2:
        raise DataError(f"{len(examples)} record(s) cannot be split into train and test; give a test file")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_test = min(len(examples) - 1, max(1, round(share * len(examples))))
    test = set(order[:n_test])
    return [e for i, e in enumerate(examples) if i not in test], [examples[i] for i in sorted(test)]


def split_note(path: str | Path, n_train: int, n_test: int) -> str:
    """The sentence that says which records of a user's file are held out."""
    return (
        f"{path}: testing on a held-out {n_test} of its {n_train + n_test} records "
        f"(a random {TEST_SHARE:.0%}, seed {SPLIT_SEED}), training on the other {n_train}"
    )


def is_user_task(task: str) -> bool:
    """Whether `task` names the user's data file(s) rather than an embedded task."""
    return Path(task.partition(TEST_FILE_SEP)[0]).suffix.lower() in (".jsonl", ".json", ".csv", ".parquet")


def load_task(task: str, split: str) -> list[Example]:
    """Examples of an embedded task split, or of a user's file (see TEST_FILE_SEP) when `task` is a path.

    A user's file without its own test file is split once, seeded: train and test never share a record.
    """
    if is_benchmark(task):
        return benchmark_examples(task, split)
    if not is_user_task(task):
        return load_examples(task_file(task, split))
    train_path, _, test_path = task.partition(TEST_FILE_SEP)
    if test_path:
        return load_examples(train_path if split == "train" else test_path)
    train, test = held_out_split(load_examples(train_path))
    return train if split == "train" else test


def to_dataset(examples: list[Example]) -> Dataset:
    """A `datasets.Dataset` view (one row per example, with a 'label' column) for partitioners."""
    return Dataset.from_list([{"idx": i, "label": e.label} for i, e in enumerate(examples)])


def _iid(num_partitions: int, n: int, alpha: float, classes_per_partition: int, seed: int):
    from flwr_datasets.partitioner import IidPartitioner

    return IidPartitioner(num_partitions=num_partitions)


def _dirichlet(num_partitions: int, n: int, alpha: float, classes_per_partition: int, seed: int):
    from flwr_datasets.partitioner import DirichletPartitioner

    return DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        alpha=alpha,
        min_partition_size=max(1, min(10, n // (4 * num_partitions))),
        self_balancing=False,
        seed=seed,
    )


def _pathological(num_partitions: int, n: int, alpha: float, classes_per_partition: int, seed: int):
    from flwr_datasets.partitioner import PathologicalPartitioner

    return PathologicalPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        num_classes_per_partition=classes_per_partition,
        class_assignment_mode="deterministic",
        seed=seed,
    )


# Run-config `partitioning` values: name -> a factory of the flwr-datasets partitioner.
PARTITIONERS = {"iid": _iid, "dirichlet": _dirichlet, "pathological": _pathological}


def partition(
    examples: list[Example],
    num_partitions: int,
    scheme: str = "dirichlet",
    alpha: float = 0.5,
    classes_per_partition: int = 2,
    seed: int = 0,
) -> list[list[Example]]:
    """Split examples across clients with the flwr-datasets partitioner registered as `scheme`."""
    if num_partitions < 1 or num_partitions > len(examples):
        raise ValueError(f"cannot split {len(examples)} examples into {num_partitions} partitions")
    if scheme not in PARTITIONERS:
        raise ValueError(f"unknown partition scheme {scheme!r}; choose one of {', '.join(PARTITIONERS)}")
    part = PARTITIONERS[scheme](num_partitions, len(examples), alpha, classes_per_partition, seed)
    part.dataset = to_dataset(examples)
    return [[examples[i] for i in part.load_partition(p)["idx"]] for p in range(num_partitions)]
