"""Merge two adapters tuned on two embedded tasks into one model; score it on both tasks.

Takes the run directories of two finished federated runs (by default the ones `bench/dare_sweep.py`
leaves: `dare-p0.0` on wn-category and `wn-pos-fedavg` on wn-pos) and reports, on both tasks:
the base model alone, each adapter alone, and the two merged by task arithmetic, TIES and DARE-TIES.

    python bench/merge_tasks.py [--runs-dir ~/.offsite/bench-dare] [--eval-size 300]

Writes bench/results/merge_tasks.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))

from coordinator.aggregation.merge import (  # noqa: E402
    MergeSource,
    MergeSpec,
    apply_vector,
    merge_vectors,
    read_adapter,
    task_vector,
)
from emulator.data import load_task  # noqa: E402
from emulator.evaluate import accuracy  # noqa: E402
from emulator.zoo import load_model  # noqa: E402

METHODS = {
    "task_arithmetic": {},
    "ties": {"density": 0.5},
    "dare_ties": {"p": 0.5, "seed": 0},
}


def main() -> None:
    """Score base, single adapters and merges on both tasks; write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=Path("~/.offsite/bench-dare").expanduser())
    parser.add_argument("--runs", nargs=2, default=["dare-p0.0", "wn-pos-fedavg"])
    parser.add_argument("--tasks", nargs=2, default=["wn-category", "wn-pos"])
    parser.add_argument("--eval-size", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "merge_tasks.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    full, tok = load_model("zoo:base")
    tests = {t: load_task(t, "test")[: args.eval_size] for t in args.tasks}
    sources = [MergeSource(args.runs_dir / r) for r in args.runs]
    vectors = [task_vector(full, read_adapter(s.path)) for s in sources]

    def score(model) -> dict[str, float]:
        return {t: accuracy(model, tok, ex) for t, ex in tests.items()}

    rows: dict[str, dict] = {"base": score(full)}
    for run, vec in zip(args.runs, vectors, strict=True):
        rows[f"only {run}"] = score(apply_vector(copy.deepcopy(full), vec))
    for method, params in METHODS.items():
        t0 = time.perf_counter()
        spec = MergeSpec(method, "zoo:base", sources, params)
        merged = apply_vector(copy.deepcopy(full), merge_vectors(spec, vectors))
        rows[f"merged {method}"] = {**score(merged), "merge_s": time.perf_counter() - t0}
    for name, row in rows.items():
        print(f"{name:28s} " + "  ".join(f"{t} {row[t]:5.1f}" for t in args.tasks), flush=True)
    result = {
        "runs": args.runs,
        "tasks": args.tasks,
        "eval_size": args.eval_size,
        "methods": METHODS,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
