"""Proxy-tuning: a base model guided by a small expert (LoRA, tuned centrally) vs its untuned self.

Prints and saves: accuracy of base alone, proxy, expert alone; the share of the base-to-expert gap
closed (and, with --reference, of the gap to the base tuned directly); and decode latency per
token of proxy vs base alone (same batch, same stepping code, one run).

    python3 bench/control_proxy.py          # zoo:base + zoo:small, writes bench/results/control_proxy.json
    python3 bench/control_proxy.py --base zoo:smollm2 --small zoo:smollm2-small \
        --reference bench/results/smollm2-experiment.json --out bench/results/control_proxy_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emulator.data import load_task  # noqa: E402
from emulator.evaluate import accuracy  # noqa: E402
from emulator.plugin import add_lora  # noqa: E402
from emulator.proxy import SmallPair, check_same_vocab, proxy_accuracy, proxy_generate  # noqa: E402
from emulator.train import tune  # noqa: E402
from emulator.zoo import load_model  # noqa: E402


def _latency(base, tok, prompts, pair, new_tokens: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = proxy_generate(base, tok, prompts, pair, max_new_tokens=new_tokens)
        steps = max(len(o) for o in out)
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


def _tuned_base(report: str | None, model: str, task: str) -> float | None:
    """Mean 'full FT (all)' accuracy of `model` on `task` from an experiment report, if one is given."""
    if not report:
        return None
    data = json.loads(Path(report).read_text())
    cfg = data["config"]
    if cfg["model"] != model or cfg["task"] != task:
        raise SystemExit(f"{report} is an experiment on {cfg['model']} / {cfg['task']}, not {model} / {task}")
    return next(iter(data["table"].values()))["full FT (all)"]["mean"]  # every row carries the references


def main() -> None:
    """Tune the expert, score the three decoders, time them; print and save JSON."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--base", default="zoo:base", help="the large model to steer")
    ap.add_argument("--small", default="zoo:small", help="expert / anti-expert, on the base's vocabulary")
    ap.add_argument("--task", default="wn-category")
    ap.add_argument("--lr", type=float, default=3e-3, help="the expert's LoRA learning rate")
    ap.add_argument(
        "--reference", help="an `offsite experiment` report of the base: its full FT (all) is the tuned base"
    )
    ap.add_argument("--out", default="bench/results/control_proxy.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    base, tok = load_model(args.base)
    small, stok = load_model(args.small)
    check_same_vocab(tok, stok, base, small)
    train = load_task(args.task, "train")[: args.n_train]
    test = load_task(args.task, "test")[: args.n_test]
    torch.manual_seed(0)
    expert = add_lora(small, list(range(small.config.num_hidden_layers)), args.rank)
    params = [p for p in expert.parameters() if p.requires_grad]
    stats = tune(expert, stok, train, params, steps=args.steps, lr=args.lr, batch_size=16, seed=0)
    expert.eval()
    pair = SmallPair(expert)  # expert and anti-expert: one peft model, a two-row mixed batch
    acc_base = accuracy(base, tok, test)
    acc_expert = accuracy(expert, stok, test)
    with expert.disable_adapter():
        acc_anti = accuracy(expert, stok, test)
    acc_proxy = proxy_accuracy(base, tok, test, pair, alpha=1.0)
    gap = acc_expert - acc_base
    closed = (acc_proxy - acc_base) / gap if gap else None
    print(f"base {acc_base:.1f}  proxy {acc_proxy:.1f}  expert {acc_expert:.1f}  anti-expert {acc_anti:.1f}  "
          f"gap closed {100 * closed:.0f}%" if closed is not None else "no gap", flush=True)  # fmt: skip
    tuned = _tuned_base(args.reference, args.base, args.task)
    closed_tuned = (
        (acc_proxy - acc_base) / (tuned - acc_base) if tuned is not None and tuned != acc_base else None
    )
    if closed_tuned is not None:
        print(
            f"base tuned directly {tuned:.1f}: proxy closes {100 * closed_tuned:.0f}% of that gap", flush=True
        )
    pos = load_task("wn-pos", "test")[: args.batch]
    prompts = [e.prompt for e in pos]
    split = SmallPair.split(expert)  # the same pair as two plain models: merged expert, bare base
    for p in (pair, split):
        _latency(base, tok, prompts, p, 4, 1)  # warm-up
    # Interleaved, so load from other processes on the machine hits all alike.
    runs = [(_latency(base, tok, prompts, None, args.new_tokens, 1),
             _latency(base, tok, prompts, pair, args.new_tokens, 1),
             _latency(base, tok, prompts, split, args.new_tokens, 1)) for _ in range(7)]  # fmt: skip
    lat_base = statistics.median(r[0] for r in runs)
    lat_mixed = statistics.median(r[1] for r in runs)
    lat_proxy = statistics.median(r[2] for r in runs)
    print(f"decode per token, batch {args.batch}: base {1e3 * lat_base:.2f} ms, proxy (two models) "
          f"{1e3 * lat_proxy:.2f} ms ({lat_proxy / lat_base:.2f}x), proxy (mixed peft batch) "
          f"{1e3 * lat_mixed:.2f} ms ({lat_mixed / lat_base:.2f}x)", flush=True)  # fmt: skip
    out = {
        "task": args.task,
        "n_test": len(test),
        "base": args.base,
        "expert": {
            "model": args.small,
            "lr": args.lr,
            "lora_rank": args.rank,
            "tuning": "centralised",
            "steps": args.steps,
            "train_examples": len(train),
            "loss": stats.loss,
            "seconds": stats.seconds,
        },  # fmt: skip
        "accuracy": {"base": acc_base, "proxy": acc_proxy, "expert": acc_expert, "anti_expert": acc_anti},
        "gap_closed_share": closed,
        "tuned_base": {"accuracy": tuned, "from": args.reference, "gap_closed_share": closed_tuned},
        "latency": {
            "batch": args.batch,
            "new_tokens": args.new_tokens,
            "base_ms_per_token": 1e3 * lat_base,
            "proxy_ms_per_token": 1e3 * lat_proxy,
            "proxy_mixed_batch_ms_per_token": 1e3 * lat_mixed,
            "ratio": lat_proxy / lat_base,
            "threads": torch.get_num_threads(),
            "expert_anti": "one peft model, mixed batch",
        },  # fmt: skip
        "torch": torch.__version__,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
