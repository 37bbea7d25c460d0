"""Poisoning, measured: plug-in accuracy when 1 or 2 of 10 sites send sign-flipped or 10x-scaled updates.

Setup: zoo:base, uniform 2+2 stand-in, wn-category split evenly (IID) over 10 sites, the adapter
blocks tuned in full (robust merges work on whole tensors, so no LoRA), one round of 30 local steps
with every site, through the real ClientApp on an in-process Flower Grid. The attackers are ordinary sites with the
ClientApp's test switch `test-attack` in their node config (`sign-flip`: the honest delta reversed;
`scale10`: ten times the honest delta).

Each attack's round is played once and its replies are then merged by every aggregator through the
coordinator's own strategy (`aggregate_train`: validation, `max-update-norm`, the merge), and the
server measures the merged adapter's plug-in accuracy. The sites' replies in a run's first round do
not depend on the aggregator, so this is what a separate run per aggregator would compute, at a
fifth of the cost. With one attacker, site 9 attacks and site 8's reply is its honest one from the
clean round (a site's training is seeded, so it is the same reply).

Aggregators: FedAvg; FedAvg with `max-update-norm` at twice the median honest update norm of the
clean round; trimmed mean (`trimmed-beta` 0.2: two sites cut at each end); median; Krum
(`krum-malicious` 2). Besides accuracy, each row gives the merged step's distance from the clean
FedAvg step, relative to that step's length (0: the attack changed nothing).

    python3 -m bench.poisoning            # ~10 min on 2 CPU cores; writes bench/results/poisoning.json
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.harness import save_json

SITES = 10
ATTACKERS = (9, 8)  # partition ids: the first attacker, then the second
BASE = {
    "model": "zoo:base",
    "task": "wn-category",
    "emulator": "uniform",
    "rounds": 1,
    "clients-per-round": SITES,
    "min-clients": 2,
    "partitioning": "iid",
    "local-steps": 30,
    "batch-size": 8,
    "lr": 0.001,
    "max-examples": 48,
    "eval-size": 100,
    "client-eval": "none",
    "threads": 1,
    "store-url": "none",
    "node-timeout": 10.0,
}
AGGREGATORS = {
    "fedavg": {"aggregator": "fedavg"},
    "fedavg+max-update-norm": {"aggregator": "fedavg"},  # the bound comes from the clean round
    "fedtrimmedavg": {"aggregator": "fedtrimmedavg", "trimmed-beta": 0.2},
    "fedmedian": {"aggregator": "fedmedian"},
    "krum": {"aggregator": "krum", "krum-malicious": 2},
}
ATTACKS = [("none", 0), ("sign-flip", 1), ("sign-flip", 2), ("scale10", 1), ("scale10", 2)]


def node_configs(attack: str, attackers: int, cache_dir: Path) -> dict[int, dict]:
    """Ten simulated sites; the first `attackers` of ATTACKERS have the test switch `test-attack` on."""
    bad = set(ATTACKERS[:attackers])
    return {
        1000 + i: {
            "partition-id": i,
            "num-partitions": SITES,
            "cache-dir": str(cache_dir),
            "test-attack": attack if i in bad else "none",
        }
        for i in range(SITES)
    }


def play_round(run, attack: str, attackers: int, work: Path) -> list:
    """The replies of every site to round 1's train messages, `attackers` of them attacking."""
    from client.client_app import app as client_app
    from coordinator.federation.inprocess_grid import InProcessGrid
    from coordinator.federation.messages import train_config
    from coordinator.federation.strategy import make_strategy
    from protocols.records import to_float32_record

    cfg = run.cfg
    grid = InProcessGrid(client_app, node_configs(attack, attackers, work / "cache"), cfg.to_run_config())
    strategy = make_strategy(cfg, run.standin, run.key, run.adapter)
    messages = list(strategy.configure_train(1, to_float32_record(run.adapter), train_config(cfg), grid))
    return list(grid.send_and_receive(messages, timeout=cfg.round_timeout))


def merge(run, overrides: dict, replies: list):
    """(merged adapter or None, strategy) of round 1's replies under the run-config `overrides`."""
    from coordinator.config import FederationConfig
    from coordinator.federation.strategy import RoundLog, make_strategy
    from protocols.records import from_float32_record

    cfg = FederationConfig.from_run_config({**run.cfg.to_run_config(), **overrides})
    strategy = make_strategy(cfg, run.standin, run.key, run.adapter)
    strategy.round_log, strategy._prev = RoundLog(1), run.adapter  # what configure_train sets
    arrays, _ = strategy.aggregate_train(1, replies)
    return (None if arrays is None else from_float32_record(arrays)), strategy


def plug_in(run, adapter) -> float:
    """Plug-in accuracy (%) of an adapter on the server's eval set."""
    from coordinator.federation.standin.emulator import plugged
    from emulator.evaluate import accuracy

    return accuracy(plugged(run.full, adapter, run.cfg.lora_rank), run.tok, run.eval_set)


def step_error(run, adapter, clean) -> float:
    """|merged step - clean FedAvg step| / |clean FedAvg step| (the global adapter unchanged: 1.0)."""
    adapter = adapter if adapter is not None else run.adapter
    diff = sum(float((adapter[k] - clean[k]).double().pow(2).sum()) for k in clean)
    step = sum(float((clean[k] - run.adapter[k]).double().pow(2).sum()) for k in clean)
    return (diff / step) ** 0.5


def norms(strategy, bad: set[int]) -> tuple[list[float], list[float]]:
    """(honest, attacking) norms of the updates the strategy accepted."""
    rows = {n: r["metrics"]["update-norm"] for n, r in strategy.round_log.replies.items()}
    return [v for n, v in rows.items() if n not in bad], [v for n, v in rows.items() if n in bad]


def scenarios(run, work: Path) -> dict[tuple[str, int], list]:
    """Round 1's replies for each (attack, attackers): three rounds played, two derived by substitution."""
    clean = play_round(run, "none", 0, work)
    out = {("none", 0): clean}
    second = 1000 + ATTACKERS[1]
    for attack in ("sign-flip", "scale10"):
        both = play_round(run, attack, 2, work)
        out[(attack, 2)] = both
        out[(attack, 1)] = [m if m.metadata.src_node_id != second else _reply_of(clean, second) for m in both]
    return out


def _reply_of(replies: list, node: int):
    return next(m for m in replies if m.metadata.src_node_id == node)


def measure(run, work: Path, aggregators: list[str]) -> tuple[list[dict], float]:
    """One row per (aggregator, attack): plug-in accuracy, dropped updates, norms; and the norm bound."""
    replies = scenarios(run, work)
    reference, clean = merge(run, AGGREGATORS["fedavg"], replies[("none", 0)])
    bound = float(f"{2 * statistics.median(norms(clean, set())[0]):.3g}")
    rows = []
    for agg in aggregators:
        overrides = dict(AGGREGATORS[agg])
        if agg == "fedavg+max-update-norm":
            overrides["max-update-norm"] = bound
        for attack, attackers in ATTACKS:
            t0 = time.perf_counter()
            bad = {1000 + i for i in ATTACKERS[:attackers]}
            adapter, strategy = merge(run, overrides, replies[(attack, attackers)])
            honest, attacking = norms(strategy, bad)
            acc = plug_in(run, adapter if adapter is not None else run.adapter)
            rows.append({"aggregator": agg, "attack": attack, "attackers": attackers,
                         "max_update_norm": overrides.get("max-update-norm"), "plug_in": acc,
                         "step_error": step_error(run, adapter, reference),
                         "updated": adapter is not None, "dropped": sorted(strategy.round_log.dropped),
                         "median_honest_norm": statistics.median(honest),
                         "median_attacker_norm": statistics.median(attacking) if attacking else None,
                         "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
            print(f"{agg} / {attack} x{attackers}: plug-in {acc:.1f}, step error {rows[-1]['step_error']:.2f}, "
                  f"dropped {len(strategy.round_log.dropped)}", flush=True)  # fmt: skip
    return rows, bound


def table(rows: list[dict], zero_shot: float) -> str:
    """Plug-in accuracy (%) per aggregator (rows) and attack (columns), as text."""
    columns = [f"{a} x{n}" if n else "no attack" for a, n in ATTACKS]
    lines = [f"plug-in accuracy %, {SITES} sites, 1 round (full model zero-shot {zero_shot:.1f})",
             f"{'aggregator':<24}" + "".join(f"{c:>13}" for c in columns)]  # fmt: skip
    for agg in dict.fromkeys(r["aggregator"] for r in rows):
        cells = {(r["attack"], r["attackers"]): r["plug_in"] for r in rows if r["aggregator"] == agg}
        lines.append(f"{agg:<24}" + "".join(f"{cells[(a, n)]:>13.1f}" for a, n in ATTACKS))
    lines.append("step error (|merged step - clean FedAvg step| / |clean FedAvg step|)")
    for agg in dict.fromkeys(r["aggregator"] for r in rows):
        cells = {(r["attack"], r["attackers"]): r["step_error"] for r in rows if r["aggregator"] == agg}
        lines.append(f"{agg:<24}" + "".join(f"{cells[(a, n)]:>13.2f}" for a, n in ATTACKS))
    return "\n".join(lines)


def main() -> None:
    """Run every aggregator under every attack and write bench/results/poisoning.json."""
    from coordinator.config import FederationConfig
    from coordinator.federation.run import start_run
    from coordinator.ops.observers import Observers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="run directory (default: a temp dir)")
    parser.add_argument("--aggregators", nargs="+", default=list(AGGREGATORS), choices=list(AGGREGATORS))
    parser.add_argument("--out", default="poisoning.json", help="file name under bench/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("offsite").setLevel(logging.ERROR)  # the test switch warns once per attacking reply
    work = args.work or Path(tempfile.mkdtemp(prefix="offsite-poison-"))
    started, cpu = time.perf_counter(), time.process_time()
    cfg = FederationConfig.from_run_config({**BASE, "out-dir": str(work / "runs"), "run-name": "poisoning"})
    (work / "runs" / "poisoning").mkdir(parents=True, exist_ok=True)
    run = start_run(cfg, work / "runs" / "poisoning", Observers())
    rows, bound = measure(run, work, args.aggregators)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    data = {"config": BASE, "sites": SITES, "attackers": list(ATTACKERS), "aggregators": AGGREGATORS,
            "max_update_norm": bound, "baseline": run.baseline, "wall_s": round(wall, 1),
            "runs": rows}  # fmt: skip
    path = save_json(data, args.out)
    print(table(rows, run.baseline["full zero-shot"]))
    print(f"wrote {path} ({wall:.0f} s wall, {cpu:.0f} s CPU)")


if __name__ == "__main__":
    main()
