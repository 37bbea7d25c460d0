"""Proxy-tuning on the zoo: zoo:base guided by zoo:small + LoRA (tuned centrally) vs untuned zoo:small.

Prints and saves: accuracy of base alone, proxy, expert alone; the share of the base-to-expert gap
closed; and decode latency per token of proxy vs base alone (same batch, same stepping code, one run).

    python3 bench/control_proxy.py          # writes bench/results/control_proxy.json
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


def main() -> None:
    """Tune the expert, score the three decoders, time them; print and save JSON."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--out", default="bench/results/control_proxy.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    base, tok = load_model("zoo:base")
    small, stok = load_model("zoo:small")
    check_same_vocab(tok, stok, base, small)
    train = load_task("wn-category", "train")[: args.n_train]
    test = load_task("wn-category", "test")[: args.n_test]
    torch.manual_seed(0)
    expert = add_lora(small, list(range(small.config.num_hidden_layers)), args.rank)
    params = [p for p in expert.parameters() if p.requires_grad]
    stats = tune(expert, stok, train, params, steps=args.steps, lr=3e-3, batch_size=16, seed=0)
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
        "task": "wn-category",
        "n_test": len(test),
        "expert": {
            "model": "zoo:small",
            "lora_rank": args.rank,
            "tuning": "centralised",
            "steps": args.steps,
            "train_examples": len(train),
            "loss": stats.loss,
            "seconds": stats.seconds,
        },  # fmt: skip
        "accuracy": {"base": acc_base, "proxy": acc_proxy, "expert": acc_expert, "anti_expert": acc_anti},
        "gap_closed_share": closed,
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
