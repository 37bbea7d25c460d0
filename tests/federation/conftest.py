"""Fixtures for the federation tests: a tiny local checkpoint with the zoo tokenizer, small configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random 6-block Llama (hidden 32) saved with the zoo's base tokenizer, as a local checkpoint."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from emulator.zoo.specs import model_path

    out = tmp_path_factory.mktemp("tiny-model")
    tok = AutoTokenizer.from_pretrained(model_path("base"), local_files_only=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=6,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def small_run(tiny_checkpoint, tmp_path) -> dict:
    """Run-config overrides for a fast run on the tiny model (2 rounds, 2 local steps)."""
    return {
        "model": str(tiny_checkpoint),
        "emulator": "uniform",
        "adapter-first": 1,
        "adapter-last": 1,
        "keep": 2,
        "rounds": 2,
        "clients-per-round": 2,
        "local-steps": 2,
        "batch-size": 8,
        "max-examples": 48,
        "eval-size": 24,
        "out-dir": str(tmp_path / "runs"),
        "run-name": "r",
        "node-timeout": 5.0,
        "round-timeout": 60.0,
        "query-timeout": 10.0,
    }


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one thread is several times faster than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
