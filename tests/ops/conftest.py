"""Fixtures for the operations tests: a free port, a small in-process run config."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.conftest import single_thread

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
ARTIFACTS = Path(os.environ.get("OFFSITE_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts"))


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ops_run(small_run) -> dict:
    """Run-config overrides for a fast in-process federation on the tiny model (2 rounds, 2 sites)."""
    return {**small_run, "client-eval": "none"}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread per test (see tests.conftest.single_thread)."""
    yield from single_thread()
