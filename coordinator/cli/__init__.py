"""The `offsite` command line: one module per command group, registered on one typer app."""

from __future__ import annotations

import os

import typer

from coordinator.cli.control import generate, port
from coordinator.cli.dashboard import dashboard
from coordinator.cli.derive import derive
from coordinator.cli.experiment import experiment
from coordinator.cli.merge import merge_adapters
from coordinator.cli.run import run_federated
from coordinator.cli.security import certs
from coordinator.cli.zoo import zoo_app

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

app = typer.Typer(help="Offsite: tune a large model at sites that never see it.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")
app.command("derive")(derive)
app.command("experiment")(experiment)
app.command("run")(run_federated)
app.command("merge")(merge_adapters)
app.command("dashboard")(dashboard)
app.command("certs")(certs)
app.command("port")(port)
app.command("generate")(generate)
