"""The shared harness: Offsite and the FlowerTune-style baseline as two run configs of one round loop.

Both go through `coordinator.federation.loop.run_federation` and `client.client_app`, on the same model,
task, partitions, rounds, local steps and seed; only the stand-in, what is trained and the upload
codec differ:

- **offsite**: CRaSh emulator (2+2 adapter blocks, 3 clusters), LoRA on the adapter blocks with
  FFA (A frozen, only B trained and sent), DARE-compressed uploads (p = 0.9, the drop rate the DARE
  sweep in bench/results/dare_sweep.json showed costs no accuracy).
- **baseline** (FlowerTune-style): the identity stand-in `emulator = "full"` (each client holds the
  whole model), LoRA on every block, A and B trained and sent (fp16), merged by FedAvg in product space.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
from pathlib import Path

from flwr.app import Array, ArrayRecord

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

RESULTS = Path(__file__).resolve().parent / "results"

# Knobs both variants share (the "same harness" part).
COMMON = {
    "model": "zoo:base",
    "task": "wn-category",
    "rounds": 4,
    "clients-per-round": 10,
    "local-steps": 25,
    "batch-size": 16,
    "lr": 5e-3,
    "lora-rank": 8,
    "seed": 0,
    "partitioning": "dirichlet",
    "dirichlet-alpha": 0.5,
    "eval-size": 200,
    "client-eval": "none",
    # The server evaluates plug-in and emulator on the last round only, so earlier rounds show the
    # framework's own cost; the evaluated round is reported separately.
    "eval-every": 0,
    "node-timeout": 10.0,
}
VARIANTS = {
    "offsite": {"emulator": "crash", "lora-aggregation": "ffa", "codec": "dare", "dare-p": 0.9},
    "baseline": {"emulator": "full", "lora-aggregation": "product", "codec": "fp16"},
}
# Offsite with the Offsite-Tuning uniform emulator instead of CRaSh (no shared blocks: 7 of 12 run).
VARIANTS["offsite-uniform"] = {**VARIANTS["offsite"], "emulator": "uniform"}


def overrides_for(variant: str, **changes) -> dict:
    """Run-config overrides of one variant (`changes` use kebab-case keys via `**{"key": v}`)."""
    return {**COMMON, **VARIANTS[variant], **changes}


def node_configs(n_sites: int, cache_dir: Path) -> dict[int, dict]:
    """Simulated sites: partition i of n, all sharing one stand-in cache (as in a Flower simulation)."""
    return {
        1000 + i: {"partition-id": i, "num-partitions": n_sites, "cache-dir": str(cache_dir)}
        for i in range(n_sites)
    }


def run_inprocess(overrides: dict, n_sites: int, work: Path, name: str) -> dict:
    """Run the federation through an in-process Flower Grid (clients run one after another); the report."""
    from client.client_app import app as client_app
    from coordinator.config import FederationConfig
    from coordinator.federation.inprocess_grid import InProcessGrid
    from coordinator.federation.loop import run_federation

    logging.getLogger("offsite").setLevel(logging.INFO)  # round lines in the run's server.log
    cfg = FederationConfig.from_run_config({**overrides, "out-dir": str(work / "runs"), "run-name": name})
    grid = InProcessGrid(client_app, node_configs(n_sites, work / f"cache-{name}"), cfg.to_run_config())
    return run_federation(grid, cfg)


def round_rows(report: dict) -> list[dict]:
    """Per round: wall, send→reply span, clients' summed pure training time, overhead, server side."""
    rows = []
    for h in report["rounds"]:
        ok = [c for c in h["clients"] if c["status"] == "ok"]
        train = sum(c["train-seconds"] for c in ok)
        rows.append(
            {
                "round": h["round"],
                "wall_s": h["wall_s"],
                "send_to_reply_s": h["train_s"],
                "clients_train_s": train,
                "overhead_s": h["wall_s"] - train,
                "overhead_fraction": (h["wall_s"] - train) / h["wall_s"],
                "client_side_overhead_s": h["train_s"] - train,
                "server_side_s": h["wall_s"] - h["train_s"],
                "clients_ok": len(ok),
                "plug_in": h["plug-in"],
            }
        )
    return rows


def overhead_split(rows: list[dict]) -> tuple[float, float | None]:
    """Mean overhead fraction of rounds after the first: (without server eval, with it or None).

    Round 1 also delivers the stand-in; rounds the server evaluates (every `eval-every`, and the
    last) carry that evaluation, which is the user's workload rather than the framework's.
    """
    later = rows[1:] or rows
    plain = [r["overhead_fraction"] for r in later if r["plug_in"] is None]
    evaluated = [r["overhead_fraction"] for r in later if r["plug_in"] is not None]
    return statistics.fmean(plain or evaluated), statistics.fmean(evaluated) if evaluated else None


def summarise(report: dict) -> dict:
    """The figures the comparison needs from one run's report."""
    b = report["bytes"]
    rows = round_rows(report)
    later = rows[1:] or rows  # round 1 also delivers the stand-in
    plain, evaluated = overhead_split(rows)
    clients = [c for h in report["rounds"] for c in h["clients"] if c["status"] == "ok"]
    return {
        "standin": {k: report["standin"][k] for k in ("method", "layout", "adapter_blocks", "bytes")},
        "bytes": {
            "up_per_client_round": b["up_per_client"],
            # a one-round run has no stand-in-free round: its download minus the stand-in record
            "down_per_client_round": b["later_rounds_down_per_client"]
            or b["down_per_client_without_standin"]
            or b["first_round_down_per_client"] - b["standin_bytes"],
            "down_per_client_first_round": b["first_round_down_per_client"],
            "standin_bytes": b["standin_bytes"],
            "total_up": b["total_up"],
            "total_down": b["total_down"],
            "total": b["total_up"] + b["total_down"],
        },
        "rounds": rows,
        "round_wall_s_mean": statistics.fmean(r["wall_s"] for r in later),
        "client_train_s_per_client_round": statistics.fmean(c["train-seconds"] for c in clients),
        "overhead_fraction_mean": plain,
        "overhead_fraction_evaluated_rounds": evaluated,
        "accuracy": {
            k: report["five_numbers"][k]
            for k in ("full zero-shot", "emulator zero-shot", "emulator FT", "plug-in")
        },  # fmt: skip
        "max_abs_delta": max(h["train"]["max-abs-delta"] for h in report["rounds"] if h["train"]),
    }


def flowertune_wire_bytes(run_dir: str | Path) -> int:
    """Bytes of what FlowerTune sends each way per client and round: `ArrayRecord(get_peft_model_state_dict)`.

    FlowerTune ships the whole LoRA state (A and B of every block) in the adapter's own dtype, fp32
    (peft keeps adapters in fp32), both down and up. Measured on this run's final adapter.
    """
    from safetensors.torch import load_file

    state = load_file(str(Path(run_dir) / "adapter.safetensors"))
    return int(ArrayRecord({k: Array(v.float().numpy()) for k, v in state.items()}).count_bytes())


def save_json(data: dict, name: str, out_dir: Path | None = None) -> Path:
    """Write results JSON under bench/results (or out_dir)."""
    out = (out_dir or RESULTS) / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return out
