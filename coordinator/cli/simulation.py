"""Run the Flower app of a project directory on Flower's simulation engine (Ray), in this process.

This is what `flwr-simulation` does for `flwr run` (load both apps by their pyproject component
strings, fuse [tool.flwr.app.config] with overrides, give that run config to the ServerApp *and*
every ClientApp), minus the detached local SuperLink. Unlike `flwr.simulation.run_simulation`,
ClientApps see the run config (Offsite clients read `partitioning` and `lora-aggregation` there).
It relies on `flwr.simulation.run_simulation._run_simulation` (flwr 1.41, pinned < 1.42).
"""

from __future__ import annotations

import os
from pathlib import Path

from flwr.app import Context, RecordDict
from flwr.common.config import get_fused_config_from_dir, get_project_config
from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
from flwr.simulation.run_simulation import _run_simulation
from flwr.supercore.constant import NOOP_FEDERATION_ID
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.supercore.telemetry import EventType


def simulate(
    app_dir: str | Path,
    overrides: dict,
    num_supernodes: int,
    client_cpus: int = 1,
    total_cpus: int | None = None,
) -> Context:
    """Run the app in `app_dir` with run-config `overrides` on `num_supernodes` virtual nodes."""
    app_dir = Path(app_dir).expanduser().resolve()
    components = get_project_config(app_dir)["tool"]["flwr"]["app"]["components"]
    run_id = generate_rand_int_from_bytes(RUN_ID_NUM_BYTES)
    task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run = Run.create_empty(run_id=run_id)
    run.override_config = dict(overrides)
    run.primary_task_id = task_id
    run.federation_id = NOOP_FEDERATION_ID
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = task_id, run_id, SUPERLINK_NODE_ID
    context = Context(
        run_id=run_id,
        node_id=SUPERLINK_NODE_ID,
        node_config={},
        state=RecordDict(),
        run_config=get_fused_config_from_dir(app_dir, run.override_config),
    )
    result = _run_simulation(
        num_supernodes=num_supernodes,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        server_app_attr=components["serverapp"],
        client_app_attr=components["clientapp"],
        backend_config={
            "client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0},
            "init_args": {"num_cpus": total_cpus or os.cpu_count() or 1, "num_gpus": 0},
        },
        app_dir=str(app_dir),
        run=run,
        server_app_context=context,
        is_app=True,
    )
    return result.context
