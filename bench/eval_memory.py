"""Memory and time of multiple-choice scoring: the full-row scorer vs the shared-prompt scorer.

"full rows" is how scoring worked before: every (prompt + choice) pair as its own row, batches of
64 rows, log_softmax over the whole (64, T, vocab) logits. "shared prompt" is
`emulator.evaluate.choice_scores`: each prompt encoded once and its cache reused by its choices,
batches cut by a token and logits budget, only the choices' positions normalised. Each mode runs in
its own process so peak RSS is its own. Prints a table and writes bench/results/eval-memory.json.

    OMP_NUM_THREADS=1 python -m bench.eval_memory --model zoo:smollm2 --tasks sciq,hellaswag --n 100
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("full rows", "shared prompt")


@torch.no_grad()
def full_row_scores(model, tok, prompts, conts, batch: int = 64) -> list[list[float]]:
    """The previous scorer: one right-padded row per (prompt, choice), full-vocabulary log_softmax."""
    from emulator.evaluate import pad_id, right_pad

    pairs = [(i, p, c) for i, (p, cs) in enumerate(zip(prompts, conts, strict=True)) for c in cs]
    out: list[list[float]] = [[] for _ in prompts]
    for s in range(0, len(pairs), batch):
        chunk = pairs[s : s + batch]
        ids, mask = right_pad([p + c for _, p, c in chunk], pad_id(tok))
        logp = torch.log_softmax(
            model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()[:, :-1], -1
        )
        tok_lp = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        for r, (i, p, c) in enumerate(chunk):
            out[i].append(float(tok_lp[r, len(p) - 1 : len(p) - 1 + len(c)].sum()))
    return out


def one(model: str, task: str, n: int, mode: str) -> dict:
    """Score `n` test examples of `task` with `mode` in this process; figures and peak RSS."""
    from emulator.data import load_task, task_metric
    from emulator.evaluate import best_choice, choice_scores, encode_choices
    from emulator.zoo import load_model

    full, tok = load_model(model)
    examples = load_task(task, "test")[:n]
    prompts, conts = encode_choices(tok, examples)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    scorer = full_row_scores if mode == "full rows" else choice_scores
    scores = scorer(full, tok, prompts, conts)
    seconds = time.perf_counter() - t
    metric = task_metric(task) or "acc"
    hits = sum(best_choice(s, e.choices, metric) == e.answer for s, e in zip(scores, examples, strict=True))
    return {
        "task": task, "mode": mode, "examples": len(examples), "metric": metric,
        "score": 100.0 * hits / len(examples), "seconds_per_100": 100 * seconds / len(examples),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_after_load_mb": base,
        "tokens_scored": sum(len(p) + sum(map(len, cs)) for p, cs in zip(prompts, conts, strict=True)),
        "scores": scores,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    """Run every (task, mode) in a child process; print the table and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="zoo:smollm2")
    ap.add_argument("--tasks", default="sciq,hellaswag")
    ap.add_argument("--n", type=int, default=100, help="test examples per task")
    ap.add_argument("--out", type=Path, default=RESULTS / "eval-memory.json")
    ap.add_argument("--child", nargs=2, metavar=("TASK", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(one(args.model, args.child[0], args.n, args.child[1])))
        return {}
    rows = []
    for task in args.tasks.split(","):
        for mode in MODES:
            cmd = [sys.executable, "-m", "bench.eval_memory", "--model", args.model, "--n", str(args.n),
                   "--child", task, mode]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode < 0:  # the kernel's OOM killer sends SIGKILL: a result, not a crash
                rows.append({"task": task, "mode": mode, "failed": f"killed by signal {-done.returncode}"})
                print(
                    f"{task:10s} {mode:13s} killed by signal {-done.returncode} (out of memory?)", flush=True
                )
                continue
            if done.returncode != 0:
                raise SystemExit(f"{task} / {mode} failed:\n{done.stderr[-2000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{task:10s} {mode:13s} {r['metric']} {r['score']:5.1f}  {r['seconds_per_100']:6.1f} s/100  "
                  f"peak RSS {r['peak_rss_mb']:6.0f} MiB (after load {r['rss_after_load_mb']:.0f})", flush=True)  # fmt: skip
        if "scores" not in rows[-2] or "scores" not in rows[-1]:
            continue
        a, b = rows[-2]["scores"], rows[-1]["scores"]
        diff = max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))
        rows[-1]["max_score_diff_vs_full_rows"] = diff
        print(f"{task:10s} largest log-likelihood difference between the modes: {diff:.2e} nats")
    for r in rows:
        r.pop("scores", None)
    from bench.machine import machine_info

    # Tasks measured in separate runs (one may need the whole machine's memory) share one file.
    done = json.loads(args.out.read_text())["rows"] if args.out.exists() else []
    rows = [r for r in done if r["task"] not in {r["task"] for r in rows}] + rows
    report = {"model": args.model, "n": args.n, "rows": rows, "machine": machine_info()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
