"""`offsite merge`: merge adapters of several runs or tasks into one checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coordinator.cli.common import console, fail, progress, status


def merge_adapters(
    config: Annotated[
        Path, typer.Argument(help="YAML merge config (mergekit-like); see docs/merging.md.", metavar="CONFIG")
    ],
    out: Annotated[Path, typer.Option(help="Directory for the merged Hugging Face checkpoint.")],
    eval_size: Annotated[int, typer.Option(min=0, help="Test examples per task to score (0 = all).")] = 300,
) -> None:
    """Merge adapters from several runs or tasks into one model (TIES, DARE-TIES, task arithmetic...).

    CONFIG is the YAML merge config (base model, sources, method, tasks to evaluate); see docs/merging.md.
    """
    if not config.is_file():
        fail(f"CONFIG: merge config {config} does not exist")
    from coordinator.aggregation.merge import MergeConfigError, load_spec, merge, save_merge_report
    from emulator.data import DataError, load_task
    from emulator.evaluate import accuracy
    from emulator.plugin import export_checkpoint
    from emulator.zoo import load_model

    try:
        spec = load_spec(config)
        with status(f"Loading {spec.base_model}"):
            full, tok = load_model(spec.base_model)
        with status(f"Merging {len(spec.sources)} adapters with {spec.method}"):
            model, stats = merge(spec, full)
        tasks = {name: load_task(name, "test") for name in spec.evaluate}
    except (MergeConfigError, DataError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    export_checkpoint(model, out, tokenizer=tok)
    scores = {}
    with progress() as bar:
        job = bar.add_task("Scoring the merged model", total=len(tasks), info="")
        for name, examples in tasks.items():
            bar.update(job, info=name)
            scores[name] = accuracy(model, tok, examples[:eval_size] if eval_size else examples)
            bar.advance(job)
    for name, acc in scores.items():
        console.print(f"{name}: {acc:.1f}% accuracy")
    console.print(f"Merged checkpoint: {out}  (report {save_merge_report(out, spec, stats, scores)})")
