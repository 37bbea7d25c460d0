"""A coordinator in its own process: `python -m tests.ops.coordinator_proc OVERRIDES.json`.

Runs `run_federation` on an in-process grid of two sites whose train replies take at least
SLOW_S seconds, so a test can signal the process in the middle of a round.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from client.client_app import app as client_app
from coordinator.config import FederationConfig
from coordinator.federation.inprocess_grid import InProcessGrid
from coordinator.federation.loop import run_federation


def slow_client(message, context):
    """The real ClientApp, with train replies held back for SLOW_S seconds."""
    reply = client_app(message, context)
    if message.metadata.message_type == "train":
        time.sleep(float(os.environ.get("SLOW_S", "1.0")))
    return reply


def main(path: str) -> None:
    """Run the federation the overrides in `path` describe."""
    cfg = FederationConfig.from_run_config(json.loads(Path(path).read_text()))
    cache = Path(cfg.out_dir) / "cache"
    nodes = {1000 + i: {"partition-id": i, "num-partitions": 2, "cache-dir": str(cache)} for i in range(2)}
    run_federation(InProcessGrid(slow_client, nodes, cfg.to_run_config()), cfg)


if __name__ == "__main__":
    main(sys.argv[1])
