"""`offsite run`: a federated run on Flower's simulation engine, with its summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from coordinator.cli.common import console, fail


def run_federated(
    run_config: Annotated[
        list[str] | None,
        typer.Option(
            "--run-config",
            "-c",
            help="Run-config overrides, as for `flwr run`: 'rounds=5 lora-rank=4' (TOML values).",
        ),
    ] = None,
    supernodes: Annotated[int, typer.Option(help="Virtual SuperNodes (sites) to simulate.")] = 8,
    app_dir: Annotated[
        Path, typer.Option("--app", help="The Flower app (directory with pyproject.toml).")
    ] = Path("."),
    client_cpus: Annotated[int, typer.Option(help="CPUs Ray reserves per ClientApp.")] = 1,
) -> None:
    """Federated offsite-tuning on Flower's simulation engine (Ray); prints the DESIGN §6 numbers."""
    from flwr.common.config import parse_config_args

    from coordinator.cli.simulation import simulate
    from coordinator.config import ConfigError, FederationConfig
    from coordinator.federation.loop import run_dir_for

    if not (app_dir / "pyproject.toml").exists():
        fail(f"{app_dir.resolve()} has no pyproject.toml; pass the project directory with --app")
    try:
        overrides = parse_config_args(run_config or [])
        cfg = FederationConfig.from_run_config(overrides)
    except (ConfigError, ValueError) as exc:
        fail(str(exc))
    # Pin the run directory so the report can be found afterwards (absolute: Flower may change cwd).
    run_dir = run_dir_for(cfg)
    overrides |= {"out-dir": str(run_dir.parent), "run-name": run_dir.name}
    console.print(f"Simulating {supernodes} sites; run directory {run_dir}")
    simulate(app_dir, overrides, supernodes, client_cpus=client_cpus)
    report_path = run_dir / "report.json"
    if not report_path.exists():
        fail(f"the run ended without a report (stopped early or failed); see {run_dir / 'server.log'}")
    report = json.loads(report_path.read_text())
    table = Table("full zero-shot", "emulator zero-shot", "emulator FT", "plug-in", "full FT (centralised)")
    table.add_row(*(f"{v:.1f}" if isinstance(v, float) else "-" for v in report["five_numbers"].values()))
    console.print(table)
    b = report["bytes"]
    console.print(
        f"bytes per client: down {b['down_per_client_with_standin'] or 0:,.0f} with the stand-in, "
        f"{b['down_per_client_without_standin'] or 0:,.0f} without; up {b['up_per_client'] or 0:,.0f}. "
        f"Mean round {report['timing']['round_wall_mean_s']:.1f} s. Report: {report_path}"
    )
