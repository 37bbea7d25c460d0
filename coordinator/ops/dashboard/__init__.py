"""The Offsite web dashboard (`offsite dashboard`): runs, rounds, clients, curves, bytes, ε."""

from coordinator.ops.dashboard.app import create_app

__all__ = ["create_app"]
