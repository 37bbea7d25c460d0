"""The Offsite ServerApp: `flwr run .` (simulation) or a SuperLink (deployment) runs `main`.

Run config comes from pyproject's [tool.flwr.app.config] plus `--run-config` overrides; see
coordinator.config.FederationConfig for every key and docs/federation.md for how to run.
"""

from __future__ import annotations

import logging
import os
import sys

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from coordinator.federation.loop import run_federation
from coordinator.runconfig import check_server_run_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _plain_logging() -> None:
    """INFO logs of `offsite.*` to stderr, plain text (Flower captures and streams them)."""
    logger = logging.getLogger("offsite")
    logger.setLevel(logging.INFO)
    if not any(getattr(h, "_offsite", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._offsite = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False


def make_server_app(overrides: dict | None = None) -> ServerApp:
    """A ServerApp whose run config is Flower's plus `overrides` (kebab-case keys; for tests and `offsite run`)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        _plain_logging()
        cfg = check_server_run_config({**dict(context.run_config), **(overrides or {})})
        # SecAgg+ rounds run on Flower's legacy workflow, which needs the ServerApp's context.
        run_federation(grid, cfg, context=context)

    return server_app


app = make_server_app()
