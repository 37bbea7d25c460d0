"""The run store (SQLite by default, any SQLAlchemy URL) and the observers the round loop calls."""

from coordinator.runstore.observer import Observers, RunObserver, RunRecorder, observers_for, store_url_for
from coordinator.runstore.store import RunStore, StoreError, default_store_url, public_url

__all__ = [
    "Observers",
    "RunObserver",
    "RunRecorder",
    "RunStore",
    "StoreError",
    "default_store_url",
    "observers_for",
    "public_url",
    "store_url_for",
]
