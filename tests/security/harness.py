"""Run the real ServerApp loop against the real ClientApp in this process, with attackers in the path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import Message

from client.client_app import app as client_app
from coordinator.config import FederationConfig
from coordinator.federation.inprocess_grid import InProcessGrid
from coordinator.federation.loop import run_federation

Tamper = Callable[[Message], None]


class TamperingGrid(InProcessGrid):
    """An in-process grid whose `tamper[node]` edits that node's train messages on the way (a MITM)."""

    def __init__(self, *args, tamper: dict[int, Tamper] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.tamper = tamper or {}

    def push_messages(self, messages):
        messages = list(messages)
        for msg in messages:
            edit = self.tamper.get(msg.metadata.dst_node_id)
            if edit is not None and msg.metadata.message_type == "train":
                edit(msg)
        return super().push_messages(messages)


def nodes(n: int, root: Path, **extra) -> dict[int, dict]:
    """n sites (node ids 1000..), each with its own partition and its own stand-in cache."""
    return {
        1000 + i: {"partition-id": i, "num-partitions": n, "cache-dir": str(root / f"cache-{i}"), **extra}
        for i in range(n)
    }


def run(overrides: dict, root: Path, n: int, client=client_app, tamper=None, node_extra=None):
    """(report, grid) of one federation on the tiny model with n in-process sites."""
    cfg = FederationConfig.from_run_config(overrides)
    grid = TamperingGrid(client, nodes(n, root, **(node_extra or {})), cfg.to_run_config(), tamper=tamper)
    return run_federation(grid, cfg), grid


def statuses(report: dict, rnd: int = 0) -> dict[int, tuple[str, str]]:
    """node -> (status, reason) in round index `rnd` of a report."""
    return {c["node"]: (c["status"], c["reason"]) for c in report["rounds"][rnd]["clients"]}
