"""The identity stand-in (`emulator = "full"`): the FlowerTune-style baseline through Offsite's harness."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from client.client_app import app as client_app
from coordinator.config import ConfigError, FederationConfig
from coordinator.federation.inprocess_grid import InProcessGrid
from coordinator.federation.loop import run_federation
from coordinator.federation.run import load_adapter
from emulator.derive import EmulatorOptions, derive_emulator
from emulator.plugin import adapter_blocks_of
from tests.conftest import tiny_model


def test_full_standin_is_the_whole_model_with_every_block_an_adapter(token_batch):
    full = tiny_model("llama", layers=5)
    emu = derive_emulator(full, EmulatorOptions(method="full", first=2, last=2, keep=3))
    assert emu.manifest.method == "full"
    assert emu.manifest.layout == emu.manifest.adapter_blocks == [0, 1, 2, 3, 4]
    assert emu.manifest.adapter_positions == [0, 1, 2, 3, 4]
    assert adapter_blocks_of(emu.adapter_state_dict()) == [0, 1, 2, 3, 4]
    ids, mask = token_batch
    with torch.no_grad():
        assert torch.equal(emu.model(ids, attention_mask=mask).logits, full(ids, attention_mask=mask).logits)
    # Every parameter of every block trains; nothing of the blocks is frozen.
    trainable = sum(p.numel() for p in emu.freeze_all_but_adapter())
    blocks = sum(p.numel() for n, p in full.named_parameters() if ".layers." in n)
    assert trainable == blocks


def test_full_standin_config():
    cfg = FederationConfig.from_run_config({"emulator": "full", "lora-rank": 4})
    assert cfg.method == "full"
    with pytest.raises(ConfigError, match="distil"):
        FederationConfig.from_run_config({"emulator": "full", "distill-steps": 10})


def test_baseline_round_trains_lora_on_every_block(tiny_checkpoint, tmp_path: Path):
    overrides = {
        "model": str(tiny_checkpoint),
        "emulator": "full",
        "lora-rank": 2,
        "lora-aggregation": "product",
        "rounds": 1,
        "clients-per-round": 2,
        "local-steps": 2,
        "batch-size": 8,
        "max-examples": 32,
        "eval-size": 16,
        "client-eval": "none",
        "out-dir": str(tmp_path / "runs"),
        "run-name": "baseline",
        "node-timeout": 5.0,
    }
    cfg = FederationConfig.from_run_config(overrides)
    nodes = {
        10 + i: {"partition-id": i, "num-partitions": 2, "cache-dir": str(tmp_path / "cache")}
        for i in range(2)
    }
    report = run_federation(InProcessGrid(client_app, nodes, cfg.to_run_config()), cfg)
    assert report["standin"]["method"] == "full" and report["standin"]["layout"] == list(range(6))
    five = report["five_numbers"]
    # The stand-in *is* the full model: its zero-shot and tuned accuracies equal the full model's.
    assert five["emulator zero-shot"] == five["full zero-shot"]
    assert five["emulator FT"] == five["plug-in"]
    adapter = load_adapter(report["run_dir"])
    assert adapter_blocks_of(adapter) == list(range(6))
    assert any(".lora_A." in k for k in adapter) and any(".lora_B." in k for k in adapter)
    assert all(c["status"] == "ok" and c["bytes_up"] > 0 for c in report["rounds"][0]["clients"])
