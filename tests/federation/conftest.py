"""Fixtures for the federation tests: a tiny local checkpoint with the zoo tokenizer, small configs."""

from __future__ import annotations

import os

import pytest

from tests.conftest import single_thread

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread per test (see tests.conftest.single_thread)."""
    yield from single_thread()
