"""Fixtures for the operations tests: a free port, a small in-process run config."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
ARTIFACTS = Path(os.environ.get("OFFSITE_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts"))


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ops_run(tiny_checkpoint, tmp_path) -> dict:
    """Run-config overrides for a fast in-process federation on the tiny model (2 rounds, 2 sites)."""
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
        "client-eval": "none",
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
