"""The run store: SQLite by default, any SQLAlchemy URL; `RunRecorder` writes a run into it."""

from coordinator.ops.runstore.recorder import RunRecorder
from coordinator.ops.runstore.store import RunStore, StoreError, default_store_url, public_url

__all__ = ["RunRecorder", "RunStore", "StoreError", "default_store_url", "public_url"]
