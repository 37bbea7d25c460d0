"""DARE and merge-aggregator sweeps on the embedded federated run (Flower simulation, 8 sites).

Three studies, each a set of federated runs on the default config (zoo:base, CRaSh 2+2 whole-block
adapter, wn-category, 3 rounds x 30 local steps), run one after another:

- `codec`: DARE uploads with drop rate p in {0, 0.5, 0.9, 0.99}: plug-in accuracy and bytes up per
  client per round, against the uncompressed fp32 adapter delta;
- `aggregator`: FedAvg vs TIES vs DARE-TIES on a pathological split (2 categories per site);
- `tasks`: one more run on the second task (wn-pos), so `bench/merge_tasks.py` can merge the two.

    python bench/dare_sweep.py                      # all three, ~45 min on 2 cores
    python bench/dare_sweep.py --study codec --rounds 2

Results accumulate in bench/results/dare_sweep.json (one entry per run, written as each ends).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))

STUDIES = {
    "codec": [{"codec": "dare", "dare-p": p, "name": f"dare-p{p}"} for p in (0.0, 0.5, 0.9, 0.95, 0.99)],
    "aggregator": [
        {"partitioning": "pathological", "aggregator": a, "name": f"pathological-{a}"}
        for a in ("fedavg", "ties", "dare_ties")
    ],
    "tasks": [{"task": "wn-pos", "name": "wn-pos-fedavg"}],
}


def fp32_adapter_bytes(run_dir: Path) -> int:
    """Bytes of the run's adapter delta sent as uncompressed fp32 (4 bytes per trained entry)."""
    from safetensors.torch import load_file

    return 4 * sum(t.numel() for t in load_file(str(run_dir / "adapter.safetensors")).values())


def run_one(entry: dict, args: argparse.Namespace, out_dir: Path) -> dict:
    """One federated run in Flower's simulation engine; its figures."""
    from coordinator.cli.simulation import simulate

    name = entry["name"]
    overrides = {k: v for k, v in entry.items() if k != "name"}
    overrides |= {
        "rounds": args.rounds,
        "local-steps": args.local_steps,
        "client-eval": "none",
        "eval-size": args.eval_size,
        "out-dir": str(out_dir),
        "run-name": name,
        "threads": 1,
        "round-timeout": args.round_timeout,
    }
    t0 = time.perf_counter()
    simulate(ROOT, overrides, args.supernodes)
    report = json.loads((out_dir / name / "report.json").read_text())
    rounds = report["rounds"]
    ups = [c["bytes_up"] for r in rounds for c in r["clients"] if c["status"] == "ok"]
    fp32 = fp32_adapter_bytes(out_dir / name)
    return {
        "name": name,
        "overrides": overrides,
        "plug_in": rounds[-1]["plug-in"],
        "emulator_ft": rounds[-1]["emulator FT"],
        "plug_in_per_round": [r["plug-in"] for r in rounds],
        "five_numbers": report["five_numbers"],
        "bytes_up_per_client_round": sum(ups) / len(ups),
        "fp32_delta_bytes": fp32,
        "upload_reduction_vs_fp32": fp32 / (sum(ups) / len(ups)),
        "max_abs_delta_per_round": [(r["train"] or {}).get("max-abs-delta") for r in rounds],
        "round_wall_s": [r["wall_s"] for r in rounds],
        "run_seconds": time.perf_counter() - t0,
        "run_dir": str(out_dir / name),
    }


def main() -> None:
    """Run the chosen studies and write bench/results/dare_sweep.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", choices=[*STUDIES, "all"], default="all")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=30)
    parser.add_argument("--eval-size", type=int, default=200)
    parser.add_argument("--supernodes", type=int, default=8)
    parser.add_argument(
        "--round-timeout", type=float, default=3600.0, help="seconds; generous on a loaded machine"
    )
    parser.add_argument("--redo", action="store_true", help="rerun runs already in the results file")
    parser.add_argument("--runs-dir", type=Path, default=Path("~/.offsite/bench-dare").expanduser())
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dare_sweep.json")
    args = parser.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    results = json.loads(args.out.read_text()) if args.out.exists() else {"runs": {}}
    results["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform()}
    studies = list(STUDIES) if args.study == "all" else [args.study]
    for study in studies:
        for entry in STUDIES[study]:
            if entry["name"] in results["runs"] and not args.redo:
                print(f"{entry['name']}: already in {args.out}; --redo reruns it")
                continue
            shutil.rmtree(args.runs_dir / entry["name"], ignore_errors=True)
            row = run_one(entry, args, args.runs_dir)
            row["study"] = study
            results["runs"][row["name"]] = row
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
            print(f"{row['name']}: plug-in {row['plug_in']:.1f}, emulator FT {row['emulator_ft']:.1f}, "
                  f"up {row['bytes_up_per_client_round']:,.0f} B/client/round "
                  f"({row['upload_reduction_vs_fp32']:.1f}x below fp32), {row['run_seconds']:.0f} s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
