"""A site's private examples: its own JSONL/CSV/Parquet file, or its partition of an embedded task.

node_config (set per SuperNode with `--node-config`, or by the simulation engine):
- `data-path`: the site's training file; `eval-data-path`: its held-out file (optional: without it,
  a seeded 20% of `data-path` is held out for testing and the rest trains).
- `partition-id` / `num-partitions`: which slice of the embedded task this node plays (simulation).
The partitioning scheme comes from the run config (`partitioning`, `dirichlet-alpha`,
`classes-per-partition`), so every node splits the task the same way.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from emulator.data import Example, held_out_split, load_examples, load_task, partition, split_note


@functools.lru_cache(maxsize=8)
def _all_partitions(
    task: str, split: str, n: int, scheme: str, alpha: float, cpp: int, seed: int
) -> tuple[list[Example], ...]:
    # Splitting computes every partition at once, so one split serves every site this process plays
    # (a Ray actor plays many virtual sites: with 1,000 of them, splitting per site dominated rounds).
    examples = load_task(task, split)
    if n <= 1:
        return (examples,)
    return tuple(partition(examples, n, scheme=scheme, alpha=alpha, classes_per_partition=cpp, seed=seed))


def _partitioned(task: str, split: str, pid: int, n: int, scheme: str, alpha: float, cpp: int, seed: int):
    return _all_partitions(task, split, n, scheme, alpha, cpp, seed)[pid if n > 1 else 0]


@functools.lru_cache(maxsize=8)
def _held_out(path: str) -> tuple[list[Example], list[Example]]:
    train, test = held_out_split(load_examples(Path(path).expanduser()))
    # Said once per file and process, at warning level so a site's default log shows it: the site
    # trains on less than its whole file unless it names an eval-data-path.
    logging.getLogger("offsite.client").warning(
        "%s; set node-config eval-data-path to choose the test file", split_note(path, len(train), len(test))
    )
    return train, test


def _own_split(path: str, split: str) -> list[Example]:
    # Without an eval-data-path the site's file is split once, seeded: it never tests on its training records.
    train, test = _held_out(path)
    return train if split == "train" else test


def local_examples(
    node_config: dict, run_config: dict, task: str, split: str, seed: int, limit: int = 0
) -> list[Example]:
    """This node's examples for `split` ('train' or 'test'); at most `limit` (0: all)."""
    data_path, eval_path = node_config.get("data-path"), node_config.get("eval-data-path")
    if split != "train" and eval_path:
        examples = load_examples(Path(str(eval_path)).expanduser())
    elif data_path and eval_path:
        examples = load_examples(Path(str(data_path)).expanduser())
    elif data_path:
        examples = _own_split(str(data_path), split)
    else:
        n = int(node_config.get("num-partitions", 1))
        pid = int(node_config.get("partition-id", 0))
        if not 0 <= pid < max(n, 1):
            raise ValueError(f"partition-id {pid} is outside 0..{n - 1}")
        examples = _partitioned(
            task,
            split,
            pid,
            n,
            str(run_config.get("partitioning", "dirichlet")),
            float(run_config.get("dirichlet-alpha", 0.5)),
            int(run_config.get("classes-per-partition", 2)),
            seed,
        )
    if not examples:
        raise ValueError(f"this node has no {split} examples (partition empty)")
    return examples[:limit] if limit else examples
