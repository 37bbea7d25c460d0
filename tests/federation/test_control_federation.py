"""Federated control-model training (`standin = "control"`) through the ServerApp loop and the ClientApp."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from client.client_app import app as client_app
from coordinator.config import ConfigError, FederationConfig
from coordinator.federation.inprocess_grid import InProcessGrid
from coordinator.federation.loop import run_federation
from coordinator.federation.run import load_adapter
from emulator.control.model import CONTROL_METHOD, control_from_state


def _control_run(small_run: dict, tiny_checkpoint: Path) -> dict:
    return {
        **small_run,
        "standin": "control",
        "control-template": str(tiny_checkpoint),
        "control-layers": 1,
        "control-hidden": 16,
        "standin-dtype": "float32",
        "lr": 3e-3,
    }


def test_control_run_trains_and_aggregates_the_control_model(small_run, tiny_checkpoint, tmp_path):
    cfg = FederationConfig.from_run_config(_control_run(small_run, tiny_checkpoint))
    nodes = {
        1000 + i: {"partition-id": i, "num-partitions": 2, "cache-dir": str(tmp_path / "cache")}
        for i in range(2)
    }
    grid = InProcessGrid(client_app, nodes, cfg.to_run_config())
    report = run_federation(grid, cfg)
    run_dir = Path(report["run_dir"])
    manifest = json.loads((run_dir / "standin" / "manifest.json").read_text())
    assert manifest["method"] == CONTROL_METHOD and manifest["adapter_blocks"] == []
    rounds = report["rounds"]
    assert all(r["updated"] for r in rounds) and all(
        c["status"] == "ok" for r in rounds for c in r["clients"]
    )
    # The template travels once; afterwards only the control model goes down and its delta up.
    assert [c["standin_sent"] for c in rounds[0]["clients"]] == [True, True]
    assert [c["standin_sent"] for c in rounds[1]["clients"]] == [False, False]
    adapter = load_adapter(run_dir)
    control = control_from_state(manifest["options"]["control_config"], adapter)
    assert set(adapter) == set(control.state_dict())
    # The control model learned: its head is no longer the zero it started from.
    assert adapter["lm_head.weight"].abs().max() > 0
    five = report["five_numbers"]
    assert all(
        0 <= five[k] <= 100 for k in ("full zero-shot", "emulator zero-shot", "emulator FT", "plug-in")
    )
    assert report["client_eval"]["clients"] == 2
    # The template log-probs were cached per stand-in and local dataset for the next rounds.
    assert len(list((tmp_path / "cache" / "template-logprobs").glob("*.pt"))) == 2


def test_zero_control_model_leaves_the_template_unchanged(small_run, tiny_checkpoint, tmp_path):
    """Round-0 global control model (zero head): template + control scores exactly as the template."""
    from coordinator.federation.standin.control import build, evaluate, initial_adapter
    from emulator.data import load_task
    from emulator.evaluate import accuracy

    cfg = FederationConfig.from_run_config(_control_run(small_run, tiny_checkpoint))
    emu = build(cfg)
    eval_set = load_task("wn-category", "test")[:16]
    got = evaluate(emu.model, emu, emu.tokenizer, initial_adapter(cfg, None, emu), 0, eval_set)
    alone = accuracy(emu.model, emu.tokenizer, eval_set)
    assert got == {"plug-in": alone, "emulator FT": alone}


@pytest.mark.parametrize(
    "bad",
    [{"standin": "controller"}, {"standin": "control", "lora-rank": 4}, {"standin": "control", "control-hidden": 6},
     {"standin": "control", "control-dropout": 1.0}],
)  # fmt: skip
def test_control_config_errors(bad):
    with pytest.raises(ConfigError):
        FederationConfig.from_run_config(bad)


def test_control_trainer_refuses_lora(small_run, tiny_checkpoint):
    from client.control_trainer import train_control_update
    from coordinator.federation.standin.control import build, initial_adapter

    cfg = FederationConfig.from_run_config(_control_run(small_run, tiny_checkpoint))
    emu = build(cfg)
    with pytest.raises(ValueError, match="lora-rank must be 0"):
        train_control_update(
            emu, initial_adapter(cfg, None, emu), [], steps=1, lr=1e-3, batch_size=2, seed=0, lora_rank=4
        )
    assert torch.is_tensor(initial_adapter(cfg, None, emu)["lm_head.weight"])
