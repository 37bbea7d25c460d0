"""One federated control-model run on the zoo, then accuracy of three targets alone and with the control.

(a) the template (zoo:small) alone / + control; (b) the larger same-vocabulary zoo:base alone / + control;
(c) the different-vocabulary zoo:other alone / + the ported control (PM-MinED map); with --targets also
zoo:smollm2, a real pretrained model with its own 49,152-token vocabulary. Also each map's coverage.
The federation runs the real ServerApp round loop and ClientApp handlers over an in-process Flower grid.

    python3 bench/control_eval.py            # writes bench/results/control_eval.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from client.client_app import app as client_app  # noqa: E402
from coordinator.config import FederationConfig  # noqa: E402
from coordinator.federation.inprocess_grid import InProcessGrid  # noqa: E402
from coordinator.federation.loop import run_federation  # noqa: E402
from coordinator.federation.run import load_adapter
from emulator.control.model import control_from_state  # noqa: E402
from emulator.control.port import controlled_accuracy  # noqa: E402
from emulator.control.token_map import map_tokenizers  # noqa: E402
from emulator.data import load_task  # noqa: E402
from emulator.evaluate import accuracy  # noqa: E402
from emulator.zoo import load_model  # noqa: E402


def main() -> None:
    """Run the federation, score the three targets, print and save JSON."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--local-steps", type=int, default=40)
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--out", default="bench/results/control_eval.json")
    ap.add_argument(
        "--targets",
        default="small,base,other",
        help="zoo models to score alone and with the control (smollm2: the real 49,152-token one)",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {
            "standin": "control", "model": "zoo:base", "control-template": "zoo:small", "rounds": args.rounds,
            "clients-per-round": args.sites, "local-steps": args.local_steps, "lr": 3e-3, "eval-size": 100,
            "out-dir": tmp, "run-name": "control", "client-eval": "none", "node-timeout": 5.0,
        }  # fmt: skip
        cfg = FederationConfig.from_run_config(overrides)
        nodes = {1000 + i: {"partition-id": i, "num-partitions": args.sites, "cache-dir": f"{tmp}/cache"}
                 for i in range(args.sites)}  # fmt: skip
        report = run_federation(InProcessGrid(client_app, nodes, cfg.to_run_config()), cfg)
        run_dir = Path(report["run_dir"])
        manifest = json.loads((run_dir / "standin" / "manifest.json").read_text())
        control = control_from_state(manifest["options"]["control_config"], load_adapter(run_dir))
    fed_s = time.perf_counter() - start
    test = load_task("wn-category", "test")[: args.n_test]
    _, ctok = load_model("zoo:small")
    results, maps = {}, {}
    roles = {"small": "template", "base": "same-vocab larger", "other": "different vocab",
             "smollm2": "real model, other vocab"}  # fmt: skip
    for name in args.targets.split(","):
        role = roles.get(name, name)
        model, tok = load_model(f"zoo:{name}")
        tmap = map_tokenizers(tok, ctok)
        alone = accuracy(model, tok, test)
        plus = controlled_accuracy(model, tok, control, ctok, tmap, test, alpha=cfg.control_alpha)
        results[role] = {"model": f"zoo:{name}", "alone": alone, "plus_control": plus, "gain": plus - alone}
        maps[name] = tmap.stats
        print(
            f"{role:18s} zoo:{name:6s} alone {alone:5.1f}  + control {plus:5.1f}  ({plus - alone:+.1f})",
            flush=True,
        )
    out = {
        "task": "wn-category",
        "n_test": len(test),
        "federation": {
            "sites": args.sites,
            "rounds": args.rounds,
            "local_steps": args.local_steps,
            "grid": "in-process",
            "per_round": [
                {
                    "round": r["round"],
                    "plug-in": r["plug-in"],
                    "emulator FT": r["emulator FT"],
                    "train_loss": (r["train"] or {}).get("train-loss"),
                }
                for r in report["rounds"]
            ],
            "bytes": {
                k: report["bytes"][k]
                for k in ("standin_bytes", "up_per_client", "later_rounds_down_per_client")
            },
            "seconds": fed_s,
        },  # fmt: skip
        "control_params": sum(p.numel() for p in control.parameters()),
        "alpha": cfg.control_alpha,
        "template_dropout": cfg.control_dropout,
        "results": results,
        "token_map_coverage": maps,
        "improves_all": all(r["gain"] > 0 for r in results.values()),
        "seconds": time.perf_counter() - start,
        "torch": torch.__version__,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"written {args.out} in {out['seconds']:.0f} s")


if __name__ == "__main__":
    main()
