"""Offsite vs the FlowerTune-style baseline, side by side, as ratios measured in one run.

    python -m bench.compare            # what docs/benchmarks.md reports: zoo:base, wn-category, 3 rows,
                                       # 4 rounds x 25 steps; 22 min on 2 quiet cores
    python -m bench.compare --quick    # smoke run

Everything the two variants are compared on is measured in this one process run, interleaved
(offsite, baseline, offsite, baseline, ...) so that load from other jobs hits both alike:
federated runs (bytes, round wall time, framework overhead, accuracy), a client-step
micro-benchmark (step time, tokens/s) and, in child processes, client peak memory.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated

import torch
import typer

from bench.client_step import lora_adapter, measure_in_child, training_model
from bench.harness import VARIANTS, flowertune_wire_bytes, overrides_for, run_inprocess, save_json, summarise
from bench.machine import machine_info

BASELINE = "baseline"


def step_benchmark(standins: dict[str, Path], lora_rank: int, steps: int, reps: int, batch_size: int) -> dict:
    """Interleaved client training (client.trainer.train_adapter's setup and loop): step s and tokens/s."""
    from emulator.data import load_task
    from emulator.emulator import load_emulator
    from emulator.train import tune

    examples = load_task("wn-category", "train")[:256]
    emus = {v: load_emulator(d, verify=False) for v, d in standins.items()}
    for emu in emus.values():
        if emu.tokenizer.pad_token_id is None:
            emu.tokenizer.pad_token = emu.tokenizer.eos_token
    out: dict[str, dict] = {v: {"step_s": [], "tokens_per_s": []} for v in standins}
    for rep in range(reps + 1):  # rep 0 warms up both
        for v in standins:
            emu = copy.deepcopy(emus[v])
            model, params = training_model(emu, lora_adapter(emu, lora_rank), lora_rank, v == BASELINE)
            stats = tune(model, emu.tokenizer, examples, params, steps=steps, batch_size=batch_size, seed=rep)
            if rep:
                out[v]["step_s"].append(stats.seconds / stats.steps)
                out[v]["tokens_per_s"].append(stats.tokens_per_s)
    return {
        v: {
            "step_s_median": statistics.median(r["step_s"]),
            "tokens_per_s_median": statistics.median(r["tokens_per_s"]),
            "step_s_all": r["step_s"],
        }
        for v, r in out.items()
    }


def memory_benchmark(
    standins: dict[str, Path], lora_rank: int, steps: int, reps: int, batch_size: int
) -> dict:
    """Client peak RSS per variant, each in a fresh child process, interleaved; medians over reps."""
    runs: dict[str, list[dict]] = {v: [] for v in standins}
    for _ in range(reps):
        for v, d in standins.items():
            spec = {"standin": str(d), "lora_rank": lora_rank, "train_lora_a": v == BASELINE,
                    "steps": steps, "batch_size": batch_size}  # fmt: skip
            runs[v].append(measure_in_child(spec))
    keys = ("rss_floor_mb", "peak_rss_mb", "peak_minus_floor_mb", "params_stored", "params_trainable")
    return {
        v: {k: statistics.median(r[k] for r in rs) for k in keys} | {"runs": rs} for v, rs in runs.items()
    }


def ratios(res: dict, variant: str = "offsite") -> list[dict]:
    """The side-by-side table: baseline / `variant` (so > 1 means Offsite is better), with goals."""
    o, b = res[variant], res[BASELINE]
    rows = []

    def add(name: str, base: float, off: float, unit: str, higher_is_better: bool = False, goal=None):
        ratio = (off / base) if higher_is_better else (base / off)
        rows.append({"figure": name, "unit": unit, "baseline": base, "offsite": off, "ratio": ratio,
                     "goal": goal, "met": None if goal is None else ratio >= goal, "variant": variant})  # fmt: skip

    ob, bb = o["federated"]["bytes"], b["federated"]["bytes"]
    add(
        "upload bytes per client per round",
        bb["up_per_client_round"],
        ob["up_per_client_round"],
        "B",
        goal=20.0,
    )
    add("upload bytes per client per round (vs FlowerTune's fp32 LoRA state)",
        res["flowertune_wire_bytes"], ob["up_per_client_round"], "B", goal=20.0)  # fmt: skip
    add("download bytes per client per round (after the stand-in)", bb["down_per_client_round"],
        ob["down_per_client_round"], "B")  # fmt: skip
    add("download bytes per client, round 1 (with the stand-in)", bb["down_per_client_first_round"],
        ob["down_per_client_first_round"], "B")  # fmt: skip
    add("total bytes, all clients and rounds", bb["total"], ob["total"], "B")
    add("client step time", b["step"]["step_s_median"], o["step"]["step_s_median"], "s", goal=2.0)
    add("client tokens/s", b["step"]["tokens_per_s_median"], o["step"]["tokens_per_s_median"], "tok/s",
        higher_is_better=True)  # fmt: skip
    add("client peak memory (model + training)", b["memory"]["peak_minus_floor_mb"],
        o["memory"]["peak_minus_floor_mb"], "MiB", goal=2.0)  # fmt: skip
    add("client peak RSS (whole process)", b["memory"]["peak_rss_mb"], o["memory"]["peak_rss_mb"], "MiB")
    add("round wall time", b["federated"]["round_wall_s_mean"], o["federated"]["round_wall_s_mean"], "s")
    return rows


def checks(res: dict, variants: tuple[str, ...]) -> list[dict]:
    """Goals that are not ratios: framework overhead (rounds without server eval) and accuracy."""
    b = res[BASELINE]["federated"]
    out = []
    for v in (*variants, BASELINE):
        f = res[v]["federated"]
        out.append({"figure": f"framework overhead, {v} (10 clients)", "value": f["overhead_fraction_mean"],
                    "goal": "<= 0.10", "met": f["overhead_fraction_mean"] <= 0.10})  # fmt: skip
    for v in variants:
        gap = res[v]["federated"]["accuracy"]["plug-in"] - b["accuracy"]["plug-in"]
        out.append({"figure": f"final accuracy: {v} plug-in - baseline (pts)", "value": gap,
                    "goal": ">= -1.0", "met": gap >= -1.0})  # fmt: skip
    return out


def run(
    quick: bool,
    model: str | None,
    work: Path,
    repeats: int,
    step_reps: int,
    mem_reps: int,
    changes: dict | None = None,
    variants: tuple[str, ...] = ("offsite",),
) -> dict:
    """All measurements; returns the result dict (also what the JSON holds)."""
    order = (*variants, BASELINE)
    torch.set_num_threads(1)
    changes = dict(changes or {})
    if quick:
        changes |= {"rounds": 1, "local-steps": 2, "clients-per-round": 2, "eval-size": 16, "max-examples": 32,
                   "calibration-texts": 32, "adapter-first": 1, "adapter-last": 1, "keep": 2}  # fmt: skip
    if model:
        changes["model"] = model
    n_sites = changes.get("clients-per-round", 10)
    result: dict = {"machine": machine_info(), "quick": quick, "config": {}, "variants": list(variants)}
    result |= {v: {} for v in order}
    reports: dict[str, list[dict]] = {v: [] for v in order}
    t0 = time.perf_counter()
    for rep in range(repeats):
        for v in order:
            ov = overrides_for(v, **changes)
            result["config"][v] = ov
            report = run_inprocess(ov, n_sites, work, f"{v}-{rep}")
            reports[v].append(report)
            print(f"[compare] {v} run {rep + 1}/{repeats}: plug-in {report['five_numbers']['plug-in']:.1f}, "
                  f"round wall {report['timing']['round_wall_mean_s']:.1f} s", flush=True)  # fmt: skip
    for v in order:
        runs = [summarise(r) for r in reports[v]]
        fed = runs[0]
        # Timing figures: mean over the interleaved repeats; bytes and accuracy are the same in each.
        for key in ("round_wall_s_mean", "client_train_s_per_client_round", "overhead_fraction_mean"):
            fed[key] = statistics.fmean(r[key] for r in runs)
        fed["repeats"] = [
            {k: r[k] for k in ("round_wall_s_mean", "overhead_fraction_mean", "accuracy")} for r in runs
        ]
        result[v]["federated"] = fed
    standins = {v: Path(reports[v][0]["run_dir"]) / "standin" for v in order}
    rank = int(overrides_for("offsite", **changes)["lora-rank"])
    steps = 3 if quick else 10
    batch = int(overrides_for("offsite", **changes)["batch-size"])
    for v, r in step_benchmark(standins, rank, steps, step_reps, batch).items():
        result[v]["step"] = r
    for v, r in memory_benchmark(standins, rank, steps, mem_reps, batch).items():
        result[v]["memory"] = r
    result["flowertune_wire_bytes"] = flowertune_wire_bytes(reports[BASELINE][0]["run_dir"])
    result["ratios"] = [row for v in variants for row in ratios(result, v)]
    result["checks"] = checks(result, variants)
    result["seconds"] = time.perf_counter() - t0
    return result


def print_table(result: dict) -> None:
    """The ratio table and the checks, on the terminal."""
    from rich.console import Console
    from rich.table import Table

    table = Table("figure", "baseline", "offsite", "ratio (×, >1: offsite better)", "goal", "met")
    for r in result["ratios"]:
        if len(result.get("variants", [])) > 1 and r["figure"].startswith(
            "upload bytes per client per round"
        ):
            table.add_section()
        fmt = "{:,.0f}" if r["unit"] in ("B", "tok/s") else "{:,.3f}" if r["unit"] == "s" else "{:,.1f}"
        tag = "" if r["variant"] == "offsite" else f" · {r['variant']}"
        table.add_row(f"{r['figure']} [{r['unit']}]{tag}", fmt.format(r["baseline"]), fmt.format(r["offsite"]),
                      f"{r['ratio']:.2f}", "" if r["goal"] is None else f"≥ {r['goal']:g}",
                      "" if r["met"] is None else ("yes" if r["met"] else "NO"))  # fmt: skip
    for c in result["checks"]:
        table.add_row(c["figure"], "", f"{c['value']:.3f}", "", c["goal"], "yes" if c["met"] else "NO")
    Console().print(table)


def main(
    quick: Annotated[bool, typer.Option(help="Smoke run: 2 clients, 1 round, 2 steps.")] = False,
    model: Annotated[
        str, typer.Option(help="Full model (zoo:NAME or a local checkpoint); default zoo:base.")
    ] = "",
    repeats: Annotated[int, typer.Option(help="Interleaved federated runs per variant.")] = 1,
    step_reps: Annotated[int, typer.Option(help="Interleaved client-step repetitions per variant.")] = 3,
    mem_reps: Annotated[int, typer.Option(help="Child processes per variant for peak memory.")] = 2,
    rounds: Annotated[int, typer.Option(help="Federated rounds (0: harness default).")] = 0,
    local_steps: Annotated[int, typer.Option(help="Local steps per round (0: harness default).")] = 0,
    variants: Annotated[
        str, typer.Option(help="Offsite rows, comma-separated: offsite (CRaSh), offsite-uniform.")
    ] = "offsite,offsite-uniform",
    out: Annotated[Path, typer.Option(help="JSON output.")] = Path("bench/results/benchmark-compare.json"),
    work: Annotated[Path | None, typer.Option(help="Scratch directory (default: a temporary one).")] = None,
) -> None:
    """Measure Offsite and the FlowerTune-style baseline side by side; print ratios, write JSON."""
    with tempfile.TemporaryDirectory(prefix="offsite-bench-") as tmp:
        changes = {k: v for k, v in (("rounds", rounds), ("local-steps", local_steps)) if v}
        rows = tuple(v.strip() for v in variants.split(",") if v.strip())
        unknown = [v for v in rows if v not in VARIANTS or v == BASELINE]
        if unknown:
            raise typer.BadParameter(f"unknown variant(s) {unknown}; choose from offsite, offsite-uniform")
        result = run(quick, model or None, work or Path(tmp), repeats, step_reps, mem_reps, changes, rows)
        print_table(result)
        path = save_json(result, out.name, out.parent)
        print(f"[compare] wrote {path} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    typer.run(main)
