"""Zero-shot scores of models on the benchmark suite (acc and acc_norm), beside published figures.

    OMP_NUM_THREADS=1 python -m bench.zero_shot --models zoo:smollm2,zoo:base

Writes bench/results/zero-shot-suite.json. The published column is SmolLM2-135M-Instruct's model
card (zero-shot, lighteval; ARC is the mean of Easy and Challenge there); a '-' means the card has
no figure for that task.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# SmolLM2-135M-Instruct's model card, "Instruction model" table.
MODEL_CARD = {"hellaswag": 40.9, "arc (mean of easy, challenge)": 37.3, "piqa": 66.3}


def score_model(model: str, tasks: list[str], log=print) -> dict:
    """acc and acc_norm (%) of `model` on each task's whole test split, with seconds per task."""
    from emulator.data import load_task, task_metric
    from emulator.evaluate import mc_hits
    from emulator.zoo import load_model

    full, tok = load_model(model)
    out = {}
    for task in tasks:
        test = load_task(task, "test")
        t = time.perf_counter()
        hits = mc_hits(full, tok, test, ("acc", "acc_norm"))
        row = {m: 100.0 * h / len(test) for m, h in hits.items()}
        row |= {"metric": task_metric(task), "n_test": len(test), "seconds": time.perf_counter() - t}
        out[task] = row
        log(f"{model} {task}: acc {row['acc']:.1f}, acc_norm {row['acc_norm']:.1f} ({len(test)} rows, "
            f"{row['seconds']:.0f} s)")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> dict:
    """Score each model on each task; print and write the JSON."""
    from emulator.benchmarks import BENCHMARKS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="zoo:smollm2,zoo:base")
    ap.add_argument("--tasks", default=",".join(BENCHMARKS))
    ap.add_argument("--out", type=Path, default=RESULTS / "zero-shot-suite.json")
    args = ap.parse_args(argv)
    tasks = args.tasks.split(",")
    report = {"models": {m: score_model(m, tasks) for m in args.models.split(",")}, "model_card": MODEL_CARD}
    report["splits"] = {t: {"train": BENCHMARKS[t].n_train, "test": BENCHMARKS[t].n_test} for t in tasks}
    from bench.machine import machine_info

    report["machine"] = machine_info()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
