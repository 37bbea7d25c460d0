"""Fixtures for the security tests: a fast run on the tiny model, a pinned coordinator key."""

from __future__ import annotations

import os

import pytest
import torch

from protocols.signing import generate_signing_key, save_private_key, save_public_key

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def quick_run(tiny_checkpoint, tmp_path) -> dict:
    """Run-config overrides for one fast round on the tiny model (clients-per-round set per test)."""
    return {
        "model": str(tiny_checkpoint),
        "emulator": "uniform",
        "adapter-first": 1,
        "adapter-last": 1,
        "keep": 2,
        "rounds": 1,
        "local-steps": 2,
        "batch-size": 8,
        "max-examples": 24,
        "eval-size": 16,
        "client-eval": "none",
        "out-dir": str(tmp_path / "runs"),
        "run-name": "r",
        "node-timeout": 5.0,
        "round-timeout": 60.0,
        "query-timeout": 10.0,
    }


@pytest.fixture
def pinned_key(tmp_path) -> tuple[str, str]:
    """(coordinator private key path for run-config signing-key, public key path for node-config)."""
    key = generate_signing_key()
    return str(save_private_key(key, tmp_path / "coordinator.pem")), str(
        save_public_key(key, tmp_path / "coordinator.pub")
    )


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one thread is several times faster than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
