"""Round wall time of a real loopback deployment: `flower-superlink` + N `flower-supernode`s + `flwr run`.

Runs the embedded default (zoo:base, CRaSh stand-in, wn-category, Dirichlet split) for a few rounds
through real Flower processes on 127.0.0.1 and prints/writes the report's timing and bytes:

    python bench/deployment_round.py --supernodes 8 --rounds 2

Each message starts a fresh `flwr-clientapp` process, so this includes process start and model
load per message, unlike simulation. Writes bench/results/deployment-round.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))

from tests.federation.loopback import Loopback  # noqa: E402 - the tests' loopback harness


def main() -> None:
    """Run the deployment and write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supernodes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "deployment-round.json")
    args = parser.parse_args()
    # SIGTERM must unwind through `finally`, or the SuperLink/SuperNodes outlive the script.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="offsite-deploy-") as tmp:
        tmp = Path(tmp)
        net = Loopback(tmp)
        try:
            net.start_superlink()
            for i in range(args.supernodes):
                net.start_supernode(
                    f"supernode-{i}",
                    f"partition-id={i} num-partitions={args.supernodes} cache-dir='{tmp / f'cache-{i}'}'",
                )
            overrides = {
                "rounds": args.rounds,
                "clients-per-round": args.supernodes,
                "min-clients": args.supernodes,
                "local-steps": args.local_steps,
                "client-eval": "none",
                "out-dir": str(tmp / "runs"),
                "run-name": "bench",
                "node-timeout": 120.0,
                "round-timeout": 1200.0,
            }
            t0 = time.perf_counter()
            run_id = net.submit(overrides)
            status = net.wait_finished(run_id, timeout=3600)
            wall = time.perf_counter() - t0
            report_path = tmp / "runs" / "bench" / "report.json"
            if status != "finished:completed" or not report_path.exists():
                raise SystemExit(f"run ended {status!r}\n{net.diagnostics(run_id)}")
            report = json.loads(report_path.read_text())
        finally:
            net.stop()
    result = {
        "supernodes": args.supernodes,
        "rounds": args.rounds,
        "local_steps": args.local_steps,
        "run_wall_s": wall,
        "round_wall_s": [r["wall_s"] for r in report["rounds"]],
        "round_train_s": [r["train_s"] for r in report["rounds"]],
        "bytes": {k: v for k, v in report["bytes"].items() if k != "per_round"},
        "table": report.get("table"),
        "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
