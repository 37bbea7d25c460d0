"""`python -m coordinator.cli`: the `offsite` command."""

from coordinator.cli import app

app()
