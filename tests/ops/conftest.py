"""Fixtures for the operations tests: a free port, a small in-process run config, and an empty run
store on each backend (SQLite; PostgreSQL when OFFSITE_TEST_POSTGRES_URL names a server, as .ci/run does)."""

from __future__ import annotations

import importlib.util
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import single_thread

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
ARTIFACTS = Path(os.environ.get("OFFSITE_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts"))
# A PostgreSQL server the tests may create and drop databases on, e.g.
# postgresql+psycopg://postgres@127.0.0.1:5432/postgres
POSTGRES_URL = os.environ.get("OFFSITE_TEST_POSTGRES_URL", "")
BACKENDS = ["sqlite", "postgresql"]


def postgres_database() -> Iterator[str]:
    """A new, empty database on the test server (dropped afterwards); skips without a server."""
    if not POSTGRES_URL:
        pytest.skip("no PostgreSQL server: set OFFSITE_TEST_POSTGRES_URL (.ci/run starts one)")
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("no PostgreSQL driver: pip install -e '.[postgres]'")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"offsite_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def store_url(request, tmp_path) -> Iterator[str]:
    """The URL of an empty run store: SQLite under tmp_path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        from coordinator.ops.runstore import default_store_url

        yield default_store_url(tmp_path / "store")
    else:
        yield from postgres_database()


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
