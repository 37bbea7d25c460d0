"""1,000 virtual clients on Flower's simulation engine (Ray), 10 sampled per round, 5 rounds, on 2 cores.

    python -m bench.scale            # the issue's run (19 min on 2 busy cores)
    python -m bench.scale --quick    # 20 clients, 2 per round, 2 rounds

Offsite's default row (CRaSh stand-in, LoRA on the adapter, DARE uploads) with tiny local work
(2 steps on 4 examples per site). The whole process tree (this driver, the ServerApp thread,
Ray's GCS/raylet and its worker actors) is sampled for RSS and PSS; per-round peaks come from the
round boundaries in the run's server.log. Memory stays flat because clients keep no per-client
state: each Ray worker holds one verified stand-in in its memo (`client.cache`) and every virtual
node shares one on-disk cache, so the stand-in is shipped and stored once.
"""

from __future__ import annotations

import os
import re
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from bench.harness import overrides_for, save_json
from bench.machine import machine_info
from bench.rss import TreeRssSampler

ROOT = Path(__file__).resolve().parent.parent
_LINE = re.compile(r"^(\S+ \S+) INFO offsite\.coordinator: round (\d+)(/\d+)?[:]")


def round_spans(server_log: Path) -> dict[int, tuple[float, float]]:
    """Round number -> (start, end) wall-clock seconds, from the run's server.log."""
    spans: dict[int, list[float]] = {}
    for line in server_log.read_text().splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        span = spans.setdefault(int(m.group(2)), [when, when])
        span[0], span[1] = min(span[0], when), max(span[1], when)
    return {r: (s[0], s[1]) for r, s in spans.items()}


def run(supernodes: int, per_round: int, rounds: int, work: Path) -> dict:
    """Run the simulation under an RSS/PSS sampler; return per-round time and memory."""
    from coordinator.cli.simulation import simulate
    from coordinator.federation.checkpoint import load_latest

    os.environ["OFFSITE_CACHE_DIR"] = str(
        work / "cache"
    )  # every virtual node shares it (Ray workers inherit)
    os.environ["OMP_NUM_THREADS"] = "1"
    overrides = overrides_for(
        "offsite",
        **{"rounds": rounds, "clients-per-round": per_round, "local-steps": 2, "batch-size": 4,
           "max-examples": 4, "partitioning": "iid", "eval-size": 50, "client-eval": "none",
           "out-dir": str(work / "runs"), "run-name": "scale", "node-timeout": 60.0},
    )  # fmt: skip
    t0, error = time.time(), None
    with TreeRssSampler(interval=1.0) as rss, TreeRssSampler(interval=2.0, pss=True) as pss:
        try:
            simulate(ROOT, overrides, num_supernodes=supernodes, client_cpus=1, total_cpus=2)
        except Exception as exc:  # noqa: BLE001 - keep the finished rounds' figures (from the checkpoint)
            error = f"{type(exc).__name__}: {exc}"
    wall = time.time() - t0
    run_dir = work / "runs" / "scale"
    state = load_latest(run_dir)  # per-round history, also when the run died part-way
    history = state["history"] if state else []
    spans = round_spans(run_dir / "server.log")
    rows = []
    for h in history:
        start, end = spans.get(h["round"], (float("-inf"), float("inf")))
        rows.append(
            {
                "round": h["round"],
                "wall_s": h["wall_s"],
                "clients_ok": sum(c["status"] == "ok" for c in h["clients"]),
                "standin_sent": sum(c["standin_sent"] for c in h["clients"]),
                "down_per_client": statistics.fmean(c["bytes_down"] for c in h["clients"]),
                "up_per_client": statistics.fmean(c["bytes_up"] for c in h["clients"] if c["bytes_up"]),
                "peak_tree_rss_mb": rss.peak_mb(start, end),
                "peak_tree_pss_mb": pss.peak_mb(start, end),
                "plug_in": h["plug-in"],
            }
        )
    later = [r["peak_tree_rss_mb"] for r in rows[1:] if r["peak_tree_rss_mb"]]
    return {
        "error": error,
        "rounds_finished": len(rows),
        "supernodes": supernodes,
        "clients_per_round": per_round,
        "rounds": rows,
        "total_wall_s": wall,
        "round_wall_s_mean": statistics.fmean(r["wall_s"] for r in rows) if rows else None,
        "peak_tree_rss_mb": rss.peak_mb(),
        "peak_tree_pss_mb": pss.peak_mb(),
        "rss_growth_after_round_1_mb": (max(later) - min(later)) if later else None,
        "overrides": overrides,
        "baseline_accuracy": state["baseline"] if state else None,
    }


def main(
    quick: Annotated[bool, typer.Option(help="Smoke run: 20 clients, 2 per round, 2 rounds.")] = False,
    supernodes: Annotated[int, typer.Option(help="Virtual clients.")] = 1000,
    per_round: Annotated[int, typer.Option(help="Clients sampled per round.")] = 10,
    rounds: Annotated[int, typer.Option(help="Rounds.")] = 5,
    out: Annotated[Path, typer.Option(help="JSON output.")] = Path("bench/results/benchmark-scale.json"),
) -> None:
    """Simulate many virtual clients; print per-round time and peak memory, write JSON."""
    if quick:
        supernodes, per_round, rounds = 20, 2, 2
    with tempfile.TemporaryDirectory(prefix="offsite-scale-") as tmp:
        result = {"machine": machine_info(), "quick": quick, **run(supernodes, per_round, rounds, Path(tmp))}
    for r in result["rounds"]:
        print(f"[scale] round {r['round']}: {r['wall_s']:.1f} s, {r['clients_ok']} ok, stand-in sent "
              f"{r['standin_sent']}, peak tree RSS {r['peak_tree_rss_mb']:.0f} MiB "
              f"(PSS {r['peak_tree_pss_mb'] or 0:.0f} MiB)")  # fmt: skip
    print(f"[scale] {result['supernodes']} clients: total {result['total_wall_s']:.0f} s, "
          f"peak tree RSS {result['peak_tree_rss_mb']:.0f} MiB, PSS {result['peak_tree_pss_mb']:.0f} MiB"
          + (f"; FAILED after {result['rounds_finished']} rounds: {result['error']}" if result["error"] else ""))  # fmt: skip
    print(f"[scale] wrote {save_json(result, out.name, out.parent)}")


if __name__ == "__main__":
    typer.run(main)
