"""`offsite run`: a federated run on Flower's simulation engine, with its summary."""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from coordinator.cli.common import console, fail, interval


def run_federated(
    run_config: Annotated[
        list[str] | None,
        typer.Option(
            "--run-config",
            "-c",
            help="Run-config overrides, as for `flwr run`: 'rounds=5 lora-rank=4' (TOML values: quote "
            "strings, task=\"my.jsonl\"); repeatable; or one .toml file.",
        ),
    ] = None,
    supernodes: Annotated[int, typer.Option(min=1, help="Virtual SuperNodes (sites) to simulate.")] = 8,
    app_dir: Annotated[
        Path | None,
        typer.Option(
            "--app",
            help="Another Flower app (a directory with pyproject.toml); default: the installed Offsite app.",
        ),
    ] = None,
    client_cpus: Annotated[int, typer.Option(min=1, help="CPUs Ray reserves per ClientApp.")] = 1,
) -> None:
    """Federated offsite-tuning on Flower's simulation engine (Ray), then the five-number summary.

    The defaults (8 sites, 3 rounds of 30 steps on zoo:base) take about 6 minutes on 2 CPU cores.
    """
    from coordinator.runconfig import RunConfigError, parse_run_config

    if app_dir is not None and not (app_dir / "pyproject.toml").is_file():
        fail(f"--app: {app_dir.resolve()} has no pyproject.toml; --app takes a Flower app directory")
    try:
        overrides = parse_run_config(run_config)
    except RunConfigError as exc:
        fail(str(exc))
    sampled = overrides.setdefault("clients-per-round", supernodes)  # every simulated site, unless told
    if isinstance(sampled, int) and sampled > supernodes:
        fail(f"clients-per-round {sampled} is more than the {supernodes} simulated sites (--supernodes)")
    from coordinator.config import ConfigError, FederationConfig  # loads torch: after the cheap checks

    try:
        cfg = FederationConfig.from_run_config(overrides)
    except ConfigError as exc:
        fail(str(exc))
    _check_inputs(cfg)

    from coordinator.cli.simulation import builtin_app_dir, simulate
    from coordinator.federation.run import run_dir_for

    # Pin the run directory so the report can be found afterwards (absolute: Flower may change cwd).
    run_dir = run_dir_for(cfg)
    overrides |= {"out-dir": str(run_dir.parent), "run-name": run_dir.name}
    _trust_the_signing_key(cfg, run_dir)
    console.print(f"Simulating {supernodes} sites; run directory {run_dir}")
    with nullcontext(app_dir) if app_dir is not None else builtin_app_dir() as where:
        try:
            simulate(where, overrides, supernodes, client_cpus=client_cpus)
        except Exception as exc:  # the ServerApp's own error, raised again by the simulation engine
            fail(f"the run failed: {type(exc).__name__}: {exc}; see {run_dir / 'server.log'}", code=1)
    report_path = run_dir / "report.json"
    if not report_path.exists():
        fail(f"the run ended without a report (stopped early or failed); see {run_dir / 'server.log'}", 1)
    print_summary(json.loads(report_path.read_text()), report_path, _eval_size(cfg))


def _trust_the_signing_key(cfg, run_dir: Path) -> None:
    """With `signing-key` set, have the simulated sites pin its public half (they have no node config)."""
    if not cfg.signing_key or os.environ.get("OFFSITE_COORDINATOR_KEY"):
        return
    from protocols.signing import SignatureError, load_private_key, save_public_key

    try:
        key = load_private_key(Path(cfg.signing_key).expanduser())
    except (OSError, ValueError, SignatureError) as exc:
        fail(f"run-config signing-key {cfg.signing_key}: {exc}")
    os.environ["OFFSITE_COORDINATOR_KEY"] = str(save_public_key(key, run_dir / "keys" / "coordinator.pub"))


def _check_inputs(cfg) -> None:
    """Refuse a missing model or data file before Ray and the model start."""
    from coordinator.cli.checks import check_model, check_task

    check_task(cfg.task, "run-config task")
    check_model(cfg.model, "run-config model")


def _eval_size(cfg) -> int | None:
    from emulator.data import load_task

    try:
        return len(load_task(cfg.task, "test")[: cfg.eval_size])
    except (OSError, ValueError):
        return None


def print_summary(report: dict, report_path: Path, n_eval: int | None) -> None:
    """The five numbers (accuracy %, eval size, 95% interval) and the bytes each site moved."""
    five = report["five_numbers"]
    size = f"{n_eval} server-held test examples" if n_eval else "the server-held test examples"
    table = Table(*five, title=f"Accuracy % on {size} (95% interval)")
    cells, missing = [], False
    for value in five.values():
        if isinstance(value, int | float):
            low, high = interval(value, n_eval) if n_eval else (None, None)
            cells.append(f"{value:.1f}" + (f" ({low:.1f}–{high:.1f})" if low is not None else ""))
        else:
            cells.append("-¹")
            missing = True
    table.add_row(*cells)
    console.print(table)
    if missing:
        console.print("¹ not measured: the centralised reference runs with -c full-ft-steps=300 (or more).")
    console.print(bytes_line(report), highlight=False)
    failed = sum(c["status"] != "ok" for h in report.get("rounds", []) for c in h["clients"])
    if failed:
        console.print(f"[yellow]Warning:[/yellow] {failed} site update(s) failed; see the run's server.log")
    console.print(f"Report: {report_path}", highlight=False)


def bytes_line(report: dict) -> str:
    """What each site downloaded and uploaded per round, in bytes, with or without the stand-in."""
    b = report["bytes"]
    parts = []
    if b["down_per_client_with_standin"]:
        parts.append(f"down {b['down_per_client_with_standin']:,.0f} B in the round that sent the stand-in")
    else:
        parts.append(f"the stand-in ({b.get('standin_bytes') or 0:,.0f} B) was not sent: the sites had it cached")
    if b["down_per_client_without_standin"] is not None:
        parts.append(f"down {b['down_per_client_without_standin']:,.0f} B in the other rounds")
    parts.append(f"up {b['up_per_client']:,.0f} B" if b["up_per_client"] else "no upload (no site sent an update)")
    mean = report["timing"]["round_wall_mean_s"]
    return "Per site and round: " + "; ".join(parts) + (f". Mean round {mean:.1f} s." if mean else ".")
