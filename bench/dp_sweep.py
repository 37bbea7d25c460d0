"""Accuracy vs ε on the embedded task: federated FFA-LoRA runs with central DP (Flower's wrappers).

Every run: zoo:base, uniform 2+2 stand-in, wn-category split over 4 sites (Dirichlet 0.5), LoRA rank
4 with FFA (only B is trained and sent: few parameters, which is what DP noise needs), 3 rounds, all
sites every round, through the real ClientApp on an in-process Flower Grid. First a run without
DP; its median client update norm becomes the clipping norm C of the DP runs, which differ only in
the noise multiplier z (server-side clipping, noise std z·C/n on the mean). ε at δ = 1e-5 comes
from Flower's RdpAccountant (no sampling amplification: every site takes part every round).

    python3 -m bench.dp_sweep            # ~10 min on 2 CPU cores; writes bench/results/dp_sweep.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.harness import run_inprocess, save_json

BASE = {
    "model": "zoo:base",
    "task": "wn-category",
    "emulator": "uniform",
    "lora-rank": 4,
    "lora-aggregation": "ffa",
    "rounds": 3,
    "clients-per-round": 4,
    "min-clients": 4,
    "local-steps": 10,
    "batch-size": 8,
    "lr": 0.003,
    "max-examples": 64,
    "eval-size": 100,
    "client-eval": "none",
    "threads": 1,
    "store-url": "none",
}


def summary(report: dict, seconds: float) -> dict:
    """The figures of one run: accuracy per round, ε, update norms."""
    rounds = report["rounds"]
    privacy = report.get("privacy") or {}
    norms = [c["update-norm"] for r in rounds for c in r["clients"] if c["status"] == "ok"]
    return {
        "plug_in_per_round": [r["plug-in"] for r in rounds],
        "emulator_ft_per_round": [r["emulator FT"] for r in rounds],
        "plug_in": rounds[-1]["plug-in"],
        "full_zero_shot": report["five_numbers"]["full zero-shot"],
        "epsilon_per_round": [(r.get("privacy") or {}).get("epsilon") for r in rounds],
        "epsilon": privacy.get("epsilon"),
        "delta": privacy.get("delta"),
        "median_update_norm": statistics.median(norms) if norms else None,
        "seconds": round(seconds, 1),
    }


def main() -> None:
    """Run the sweep and write bench/results/dp_sweep.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.3, 1.0, 3.0])
    parser.add_argument("--work", type=Path, default=None, help="run directory (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="offsite-dp-"))
    rows = []
    t0 = time.perf_counter()
    plain = summary(run_inprocess(BASE, 4, work, "no-dp"), time.perf_counter() - t0)
    rows.append({"dp": "none", "noise_multiplier": 0.0, "clip_norm": None, **plain})
    print(f"no DP: plug-in {plain['plug_in']:.1f}  median update norm {plain['median_update_norm']:.4g}")
    clip = float(f"{plain['median_update_norm']:.2g}")
    for z in args.noise:
        t0 = time.perf_counter()
        overrides = {**BASE, "dp": "server", "dp-clip-norm": clip, "dp-noise-multiplier": z}
        row = summary(run_inprocess(overrides, 4, work, f"dp-z{z}"), time.perf_counter() - t0)
        rows.append({"dp": "server", "noise_multiplier": z, "clip_norm": clip, **row})
        print(f"z={z}: ε={row['epsilon']:.3g} (δ={row['delta']})  plug-in {row['plug_in']:.1f}")
    path = save_json({"config": BASE, "sites": 4, "runs": rows}, "dp_sweep.json")
    print(f"{'dp':>6} {'z':>5} {'C':>8} {'ε':>10} {'plug-in':>8}")
    for r in rows:
        eps = "inf" if r["epsilon"] is None else f"{r['epsilon']:.3g}"
        print(
            f"{r['dp']:>6} {r['noise_multiplier']:>5} {r['clip_norm'] or '-':>8} {eps:>10} {r['plug_in']:>8.1f}"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
