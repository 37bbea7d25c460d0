"""`offsite zoo`: the embedded model zoo (build, info)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from coordinator.cli.common import console, progress

zoo_app = typer.Typer(help="The embedded model zoo (built from WordNet, no network).", no_args_is_help=True)


@zoo_app.command("build")
def zoo_build(
    only: Annotated[
        list[str] | None, typer.Option(help="Build only these models (base, small, other).")
    ] = None,
    tasks: Annotated[bool, typer.Option(help="Also rebuild the task files.")] = True,
    out: Annotated[
        Path | None, typer.Option(help="Where to write models (default: the package's zoo).")
    ] = None,
) -> None:
    """Rebuild tokenizers, pretrain the zoo models and write the tasks (needs apt's wordnet-base)."""
    from emulator.zoo.build import build_zoo
    from emulator.zoo.specs import MODELS_DIR
    from emulator.zoo.tasks import build_tasks

    if tasks:
        console.print(f"Tasks written: {build_tasks()}")
    with progress() as bar:
        ids: dict[str, int] = {}

        def cb(name: str, step: int, total: int, info: dict) -> None:
            if name not in ids:
                ids[name] = bar.add_task(f"pretrain {name}", total=total, info="")
            bar.update(ids[name], completed=step, info=f"loss {info['loss']:.3f}")

        stats = build_zoo(out or MODELS_DIR, only=only, progress=cb)
    console.print_json(json.dumps(stats))


@zoo_app.command("info")
def zoo_info() -> None:
    """List the zoo's models with their size and pretraining figures."""
    from emulator.zoo.specs import MODELS, model_path

    table = Table("model", "tokenizer", "blocks", "hidden", "params", "val loss", "built")
    for name, spec in MODELS.items():
        stats_file = model_path(name) / "zoo_stats.json"
        stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
        table.add_row(
            name,
            spec.tokenizer,
            str(spec.layers),
            str(spec.hidden),
            f"{stats.get('params', 0):,}",
            f"{stats.get('val_loss', float('nan')):.3f}",
            "yes" if stats else "no",
        )
    console.print(table)
