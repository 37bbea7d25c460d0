"""Fixtures for the security tests: a fast run on the tiny model, a pinned coordinator key."""

from __future__ import annotations

import os

import pytest

from protocols.signing import generate_signing_key, save_private_key, save_public_key
from tests.conftest import single_thread

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def quick_run(small_run) -> dict:
    """Run-config overrides for one fast round on the tiny model (clients-per-round set per test)."""
    run = {k: v for k, v in small_run.items() if k != "clients-per-round"}
    return {**run, "rounds": 1, "max-examples": 24, "eval-size": 16, "client-eval": "none"}


@pytest.fixture
def pinned_key(tmp_path) -> tuple[str, str]:
    """(coordinator private key path for run-config signing-key, public key path for node-config)."""
    key = generate_signing_key()
    return str(save_private_key(key, tmp_path / "coordinator.pem")), str(
        save_public_key(key, tmp_path / "coordinator.pub")
    )


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread per test (see tests.conftest.single_thread)."""
    yield from single_thread()
