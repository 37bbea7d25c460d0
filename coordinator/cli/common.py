"""What every `offsite` command shares: the console, progress bars and the plain-words error exit."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console()


def progress() -> Progress:
    """A rich progress bar: description, bar, done/total, a free-text info field, elapsed time."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    )


def fail(message: str) -> None:
    """Print a user error in plain words and exit with status 2 (no traceback)."""
    console.print(f"[red]Error:[/red] {message}")
    raise typer.Exit(2)
