"""How much accuracy each adapter can hold: trained centrally, so federation and the emulator are out of it.

    python -m bench.adapter_capacity           # 100 steps, lr 5e-3 and 2e-2, 200 test examples
    python -m bench.adapter_capacity --quick   # smoke run

The comparison's accuracy gap mixes three causes: the adapter's size (LoRA on 4 of 12 blocks, B
only, vs LoRA A+B on all 12), the emulator (trained against a compressed middle, then plugged into
the full model) and federation. This script separates the first two, with the comparison's LoRA
rank, batch size and data:

- `baseline adapter on the full model`: LoRA A+B on every block (what the baseline trains);
- `Offsite adapter on the full model`: FFA-LoRA (B only) on the CRaSh adapter blocks, trained on the
  full model itself (the best that adapter can do: no emulator in the way);
- `Offsite adapter via the CRaSh emulator, plugged in`: the same adapter trained on the emulator.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Annotated

import torch
import typer

from bench.harness import COMMON, save_json
from bench.machine import machine_info


def _train_eval(model, tok, params, train, test, steps: int, lr: float, batch: int) -> tuple[float, float]:
    """(final training loss, test accuracy %) after `steps` of the shared training loop."""
    from emulator.evaluate import accuracy
    from emulator.train import tune

    stats = tune(model, tok, train, params, steps=steps, lr=lr, batch_size=batch, seed=0)
    return stats.loss, accuracy(model, tok, test)


def run(
    model_spec: str,
    steps: int,
    lrs: list[float],
    n_test: int,
    rank: int,
    work: Path,
    shape: tuple[int, int, int] = (2, 2, 3),
) -> dict:
    """Train each adapter at each lr; accuracy and loss per (adapter, lr). `shape`: emulator (first, last, keep)."""
    from bench.client_step import lora_adapter, training_model
    from bench.growth import save_standins
    from coordinator.federation.standin.emulator import plugged
    from emulator.blocks import num_blocks
    from emulator.data import load_task
    from emulator.distill import text_rows
    from emulator.emulator import load_emulator
    from emulator.evaluate import accuracy
    from emulator.plugin import add_lora, lora_state, lora_trainable
    from emulator.train import tune
    from emulator.zoo import load_model, public_texts

    torch.set_num_threads(1)
    full, tok = load_model(model_spec)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    train, test = load_task(COMMON["task"], "train"), load_task(COMMON["task"], "test")[:n_test]
    batch = int(COMMON["batch-size"])
    calib = text_rows(tok, public_texts(64))
    standin = save_standins(full, tok, {"offsite": "crash"}, work, calib, shape)["offsite"]["dir"]
    edges = load_emulator(standin, verify=False).manifest.adapter_blocks
    rows = []
    for lr in lrs:
        t0 = time.perf_counter()
        torch.manual_seed(0)
        m = add_lora(copy.deepcopy(full), list(range(num_blocks(full))), rank)
        loss, acc = _train_eval(m, tok, lora_trainable(m, train_a=True), train, test, steps, lr, batch)
        rows.append({"adapter": "baseline adapter on the full model", "lr": lr, "loss": loss, "accuracy": acc,
                     "seconds": time.perf_counter() - t0})  # fmt: skip
        t0 = time.perf_counter()
        torch.manual_seed(0)
        m = add_lora(copy.deepcopy(full), edges, rank)
        loss, acc = _train_eval(m, tok, lora_trainable(m, train_a=False), train, test, steps, lr, batch)
        rows.append({"adapter": "Offsite adapter on the full model", "lr": lr, "loss": loss, "accuracy": acc,
                     "seconds": time.perf_counter() - t0})  # fmt: skip
        t0 = time.perf_counter()
        emu = load_emulator(standin, verify=False)
        emu.tokenizer.pad_token = tok.pad_token
        model, params = training_model(emu, lora_adapter(emu, rank), rank, train_lora_a=False)
        stats = tune(model, emu.tokenizer, train, params, steps=steps, lr=lr, batch_size=batch, seed=0)
        state = {k: v.detach().float() for k, v in lora_state(model, emu.manifest.layout).items()}
        rows.append({"adapter": "Offsite adapter via the CRaSh emulator, plugged in", "lr": lr, "loss": stats.loss,
                     "accuracy": accuracy(plugged(copy.deepcopy(full), state, rank), tok, test),
                     "emulator_accuracy": accuracy(model, emu.tokenizer, test),
                     "seconds": time.perf_counter() - t0})  # fmt: skip
        for r in rows[-3:]:
            print(f"[capacity] lr {lr:g}  {r['adapter']:52s} loss {r['loss']:.3f}  accuracy {r['accuracy']:.1f}",
                  flush=True)  # fmt: skip
    best = {}
    for r in rows:
        if r["adapter"] not in best or r["accuracy"] > best[r["adapter"]]["accuracy"]:
            best[r["adapter"]] = r
    return {"machine": machine_info(), "model": model_spec, "task": COMMON["task"], "steps": steps,
            "lora_rank": rank, "batch_size": batch, "n_test": len(test), "adapter_blocks": edges,
            "zero_shot": accuracy(full, tok, test), "rows": rows, "best": best}  # fmt: skip


def main(
    quick: Annotated[bool, typer.Option(help="Smoke run: 3 steps, one lr, 16 test examples.")] = False,
    model: Annotated[str, typer.Option(help="Full model (zoo:NAME or a local checkpoint).")] = "zoo:base",
    steps: Annotated[int, typer.Option(help="Central training steps per adapter.")] = 100,
    lrs: Annotated[str, typer.Option(help="Learning rates, comma-separated.")] = "5e-3,2e-2",
    n_test: Annotated[int, typer.Option(help="Test examples scored.")] = 200,
    rank: Annotated[int, typer.Option(help="LoRA rank (0: the comparison's, 8).")] = 0,
    out: Annotated[Path, typer.Option(help="JSON output.")] = Path("bench/results/benchmark-capacity.json"),
) -> None:
    """Train the baseline's and Offsite's adapters centrally; print and write their accuracy."""
    rates = [float(x) for x in lrs.split(",") if x.strip()]
    if quick:
        steps, rates, n_test = 3, rates[:1], 16
    with tempfile.TemporaryDirectory(prefix="offsite-capacity-") as tmp:
        result = run(model, steps, rates, n_test, rank or int(COMMON["lora-rank"]), Path(tmp))
    print(f"[capacity] zero-shot {result['zero_shot']:.1f}; best: "
          + "; ".join(f"{k} {v['accuracy']:.1f} (lr {v['lr']:g})" for k, v in result["best"].items()))  # fmt: skip
    print(f"[capacity] wrote {save_json(result, out.name, out.parent)}")


if __name__ == "__main__":
    typer.run(main)
