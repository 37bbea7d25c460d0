"""The observers a run config asks for: the run store (unless 'none') and Prometheus metrics."""

from __future__ import annotations

import logging
from pathlib import Path

from coordinator.ops.metrics import MetricsObserver, serve_metrics
from coordinator.ops.observers import Observers, RunObserver
from coordinator.ops.runstore.recorder import RunRecorder
from coordinator.ops.runstore.store import RunStore, StoreError, default_store_url, public_url

log = logging.getLogger("offsite.coordinator")

STORE_OFF = "none"


def store_url_for(store_url: str, out_dir: str | Path) -> str | None:
    """The run-config `store-url` resolved: '' → SQLite under out-dir, 'none' → None (no store)."""
    if store_url.strip().lower() == STORE_OFF:
        return None
    return store_url or default_store_url(out_dir)


def observers_for(store_url: str, out_dir: str | Path, rounds: int, metrics_port: int = 0) -> Observers:
    """The observers a run config asks for: the run store unless 'none', metrics if a port is set."""
    found: list[RunObserver] = []
    url = store_url_for(store_url, out_dir)
    if url is not None:
        try:
            found.append(RunRecorder(RunStore(url), rounds))
            log.info("run store %s", public_url(url))
        except StoreError:
            raise
        except Exception:  # noqa: BLE001 - an unreachable store must not stop the training run
            log.warning("run store %s unavailable; this run is not recorded", public_url(url), exc_info=True)
    if metrics_port:
        serve_metrics(metrics_port)
        found.append(MetricsObserver())
        log.info("Prometheus metrics on :%d/metrics", metrics_port)
    return Observers(found)
