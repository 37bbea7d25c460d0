"""The `offsite` command line: one module per command group, registered on one typer app."""

from __future__ import annotations

import os
import sys
from typing import Annotated

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

# No locals in tracebacks: they would print whole configs, a store-url password included.
app = typer.Typer(
    help="Offsite: tune a large model at sites that never see it.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    pretty_exceptions_short=True,
)


def _keep_argument_help() -> None:
    # typer 0.20 sets TyperArgument.help and then calls click's Parameter.__init__, which (click 8.5)
    # resets it to None: no argument help in --help. Set it again after click's constructor.
    from typer.core import TyperArgument

    if getattr(TyperArgument, "_offsite_help", False):
        return
    original = TyperArgument.__init__

    def init(self, *args, help: str | None = None, **kwargs) -> None:  # noqa: A002 - click's name
        original(self, *args, help=help, **kwargs)
        self.help = help

    TyperArgument.__init__ = init
    TyperArgument._offsite_help = True


_keep_argument_help()

if not sys.stderr.isatty():
    # Piped, typer's error panel wraps a message at 80 columns; click's plain text keeps it on one line.
    from typer import rich_utils

    rich_utils.rich_format_error = lambda exc: exc.show()


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"offsite {version('offsite')}")
        except PackageNotFoundError:
            typer.echo("offsite (not installed as a package)")
        raise typer.Exit()


@app.callback()
def _main(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Offsite: tune a large model at sites that never see it."""


app.add_typer(zoo_app, name="zoo")
app.command("derive")(derive)
app.command("experiment")(experiment)
app.command("run")(run_federated)
app.command("merge")(merge_adapters)
app.command("dashboard")(dashboard)
app.command("certs")(certs)
app.command("port")(port)
app.command("generate")(generate)
