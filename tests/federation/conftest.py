"""Fixtures for the federation tests: a tiny local checkpoint with the zoo tokenizer, small configs."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
