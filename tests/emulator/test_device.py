"""Device and precision: bf16 training on CPU, clear errors for a device or precision a machine lacks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from client.round_step import compute_settings
from coordinator.config import ConfigError, FederationConfig
from emulator.data import Example
from emulator.train import DeviceError, autocast, check_precision, resolve_device, tune
from tests.conftest import tiny_model


def _examples() -> list[Example]:
    return [Example(f"item {i} is", (" red", " blue"), i % 2, None, "") for i in range(16)]


def _context(node: dict | None = None, run: dict | None = None):
    return SimpleNamespace(node_config=node or {}, run_config=run or {})


def test_bf16_training_on_cpu_gives_a_finite_loss(zoo_tokenizer):
    torch.manual_seed(0)
    model = tiny_model("llama", layers=2, vocab=len(zoo_tokenizer))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    stats = tune(model, zoo_tokenizer, _examples(), params, steps=3, batch_size=4, precision="bf16")
    assert torch.isfinite(torch.tensor(stats.loss)) and stats.loss > 0
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad(), autocast("cpu", "bf16"):
        logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert logits.dtype == torch.bfloat16


def test_cuda_without_cuda_is_a_clear_error_naming_the_key(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=r"node-config device = 'cuda'.*no usable CUDA device"):
        resolve_device("cuda", key="node-config device")
    with pytest.raises(DeviceError, match=r"run-config device = 'cuda:1'"):
        compute_settings(_context(run={"device": "cuda:1"}))
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="device must be auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")


def test_node_config_wins_over_run_config(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compute_settings(_context()) == (torch.device("cpu"), "fp32")
    run = {"device": "cuda", "precision": "fp16"}
    assert compute_settings(_context({"device": "cpu", "precision": "bf16"}, run)) == (
        torch.device("cpu"),
        "bf16",
    )


def test_precision_is_checked_against_the_device():
    assert check_precision("bf16", "cpu") == torch.bfloat16
    with pytest.raises(DeviceError, match="precision = 'fp16' needs a CUDA device"):
        check_precision("fp16", "cpu")
    with pytest.raises(DeviceError, match="precision must be one of fp32, bf16, fp16"):
        check_precision("int8", "cpu")


def test_run_config_keys():
    cfg = FederationConfig.from_run_config({"device": "cuda:0", "precision": "bf16"})
    assert (cfg.device, cfg.precision) == ("cuda:0", "bf16")
    assert (FederationConfig().device, FederationConfig().precision) == ("cpu", "fp32")
    with pytest.raises(ConfigError, match="device must be"):
        FederationConfig.from_run_config({"device": "tpu"})
    with pytest.raises(ConfigError, match="precision must be"):
        FederationConfig.from_run_config({"precision": "fp8"})


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_client_training_in_bf16_on_cpu(zoo_tokenizer, lora_rank):
    from bench.client_step import lora_adapter
    from client.trainer import train_adapter
    from emulator.derive import EmulatorOptions, derive_emulator

    full = tiny_model("llama", layers=6, vocab=len(zoo_tokenizer))
    emu = derive_emulator(full, EmulatorOptions("uniform", 1, 1, 2), tokenizer=zoo_tokenizer)
    adapter = emu.adapter_state_dict() if lora_rank == 0 else lora_adapter(emu, lora_rank)
    update = train_adapter(emu, adapter, _examples(), lora_rank=lora_rank, train_lora_a=False, steps=2,
                           lr=1e-3, batch_size=4, seed=0, device="cpu", precision="bf16")  # fmt: skip
    assert update.delta and all(
        d.dtype == torch.float32 and torch.isfinite(d).all() for d in update.delta.values()
    )
    assert any(d.abs().sum() > 0 for d in update.delta.values())
    frozen = [p for n, p in emu.model.named_parameters() if not p.requires_grad and "lora_" not in n]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)  # LoRA factors stay fp32
