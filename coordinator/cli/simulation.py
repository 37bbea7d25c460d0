"""Run the Flower app of a project directory on Flower's simulation engine (Ray), in this process.

This is what `flwr-simulation` does for `flwr run` (load both apps by their pyproject component
strings, fuse [tool.flwr.app.config] with overrides, give that run config to the ServerApp *and*
every ClientApp), minus the detached local SuperLink. Unlike `flwr.simulation.run_simulation`,
ClientApps see the run config (Offsite clients read `partitioning` and `lora-aggregation` there).
It relies on `flwr.simulation.run_simulation._run_simulation` (flwr 1.42, pinned < 1.43).

Without a project directory, the installed package's own app runs: Flower reads the ClientApps' run
config from a directory's pyproject.toml, so a small one is written to a temporary directory.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
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

# Ray warns on every run that it will stop overriding CUDA_VISIBLE_DEVICES when num_gpus=0; opting in
# to that future behaviour now is what the sites want anyway (they reserve no GPU) and ends the warning.
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

COMPONENTS = {"serverapp": "coordinator.server_app:app", "clientapp": "client.client_app:app"}


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def builtin_pyproject() -> str:
    """A pyproject.toml for the installed package's Flower app, with every run-config default."""
    from coordinator.config import FederationConfig

    lines = ['[project]', 'name = "offsite-app"', 'version = "1.0.0"', "", "[tool.flwr.app]",
             'publisher = "offsite"', "", "[tool.flwr.app.components]"]  # fmt: skip
    lines += [f"{k} = {json.dumps(v)}" for k, v in COMPONENTS.items()]
    lines += ["", "[tool.flwr.app.config]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in FederationConfig().to_run_config().items()]
    return "\n".join(lines) + "\n"


@contextmanager
def builtin_app_dir():
    """A temporary Flower app directory for the installed package (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="offsite-app-") as tmp:
        (Path(tmp) / "pyproject.toml").write_text(builtin_pyproject())
        yield Path(tmp)


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
    # Ray workers import flwr after this point, the driver has already: WARNING and below are then
    # silenced in the workers only, where flwr's one warning is "Manually terminating ClientAppActor"
    # at every shutdown (a site's failure still reaches the driver as an exception and is logged there).
    os.environ.setdefault("FLWR_LOG_LEVEL", "ERROR")
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
