"""Framework overhead at 10 simulated clients: round wall time minus the clients' pure training time.

    python -m bench.overhead            # Offsite's default row, 10 clients, 4 rounds, in-process and Ray
    python -m bench.overhead --quick

The same run config goes through two transports, one after the other: the in-process Grid (the
round loop and ClientApp with no transport) and Flower's simulation engine (Ray) with one actor
holding both CPUs, so clients run one at a time there too and `wall - Σ train-seconds` is exactly
what the framework adds: stand-in query, signing, (de)serialisation, message passing, the cache,
data partitioning, codecs, validation, merging and checkpoints. The server evaluates the last round
only (`eval-every = 0`), so rounds 2 .. n-1 show the framework alone; the last round's figure, with
the server's plug-in and emulator evaluation in it, is reported beside it.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Annotated

import torch
import typer

from bench.harness import overhead_split, overrides_for, round_rows, run_inprocess, save_json
from bench.machine import machine_info

ROOT = Path(__file__).resolve().parent.parent


def run(clients: int, rounds: int, local_steps: int, eval_size: int, work: Path) -> dict:
    """Both transports; per-round rows and mean overhead fraction (without / with the server's eval)."""
    from coordinator.cli.simulation import simulate

    ov = overrides_for("offsite", **{"rounds": rounds, "clients-per-round": clients, "local-steps": local_steps,
                                     "eval-size": eval_size, "out-dir": str(work / "runs")})  # fmt: skip
    torch.set_num_threads(1)
    out = {"overrides": ov}
    report = run_inprocess(ov, clients, work, "inprocess")
    out["inprocess"] = round_rows(report)
    os.environ["OFFSITE_CACHE_DIR"] = str(work / "cache-ray")
    os.environ["OMP_NUM_THREADS"] = "1"
    simulate(ROOT, {**ov, "run-name": "ray"}, num_supernodes=clients, client_cpus=2, total_cpus=2)
    out["ray"] = round_rows(json.loads((work / "runs" / "ray" / "report.json").read_text()))
    for k in ("inprocess", "ray"):
        out[f"{k}_overhead_fraction"], out[f"{k}_overhead_fraction_evaluated"] = overhead_split(out[k])
        out[f"{k}_round_wall_s"] = statistics.fmean(r["wall_s"] for r in out[k][1:] or out[k])
    return out


def main(
    quick: Annotated[bool, typer.Option(help="Smoke run: 2 clients, 2 rounds of 2 steps.")] = False,
    clients: Annotated[int, typer.Option(help="Simulated clients (all train every round).")] = 10,
    rounds: Annotated[int, typer.Option(help="Rounds (the first also delivers the stand-in).")] = 4,
    local_steps: Annotated[int, typer.Option(help="Local steps per round.")] = 25,
    out: Annotated[Path, typer.Option(help="JSON output.")] = Path("bench/results/benchmark-overhead.json"),
) -> None:
    """Measure framework overhead in-process and on Ray; print it, write JSON."""
    if quick:
        clients, rounds, local_steps = 2, 3, 2
    with tempfile.TemporaryDirectory(prefix="offsite-overhead-") as tmp:
        result = {
            "machine": machine_info(),
            **run(clients, rounds, local_steps, 200 if not quick else 16, Path(tmp)),
        }
    for k in ("inprocess", "ray"):
        for r in result[k]:
            print(f"[overhead] {k} round {r['round']}: wall {r['wall_s']:.1f} s, clients' training "
                  f"{r['clients_train_s']:.1f} s, overhead {100 * r['overhead_fraction']:.1f}% "
                  f"(client side {r['client_side_overhead_s']:.1f} s, server side {r['server_side_s']:.1f} s)")  # fmt: skip
    print(f"[overhead] wrote {save_json(result, out.name, out.parent)}")


if __name__ == "__main__":
    typer.run(main)
