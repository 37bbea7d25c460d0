"""`offsite experiment`: the centralised five-number experiment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from coordinator.cli.common import console, fail, progress


def experiment(
    task: Annotated[
        str, typer.Option(help="Embedded task name or a JSONL/CSV/Parquet file.")
    ] = "wn-category",
    model: Annotated[str, typer.Option(help="zoo:NAME or a local checkpoint directory.")] = "zoo:base",
    variants: Annotated[
        str, typer.Option(help="Comma-separated: uniform, crash, crash+distill.")
    ] = "uniform,crash,crash+distill",
    seeds: Annotated[int, typer.Option(help="Number of seeds (0..n-1).")] = 3,
    steps: Annotated[int, typer.Option(help="Tuning steps per stage.")] = 100,
    first: Annotated[int, typer.Option(help="Adapter blocks at the bottom.")] = 2,
    last: Annotated[int, typer.Option(help="Adapter blocks at the top.")] = 2,
    keep: Annotated[int, typer.Option(help="Middle blocks/clusters kept in the emulator.")] = 3,
    lora_rank: Annotated[
        int, typer.Option(help="Tune LoRA of this rank on the adapter (0: whole blocks).")
    ] = 0,
    distill_steps: Annotated[int, typer.Option(help="Distillation steps for +distill variants.")] = 200,
    n_test: Annotated[int, typer.Option(help="Test examples to score.")] = 300,
    out: Annotated[Path, typer.Option(help="Where to write the JSON report.")] = Path("runs/experiment.json"),
) -> None:
    """Run the centralised five-number experiment and print the DESIGN §6 table."""
    from coordinator.experiment import COLUMNS, ExperimentConfig, format_table, run_experiment, save_report

    cfg = ExperimentConfig(
        model=model,
        task=task,
        variants=[v.strip() for v in variants.split(",") if v.strip()],
        seeds=list(range(seeds)),
        steps=steps,
        first=first,
        last=last,
        keep=keep,
        lora_rank=lora_rank,
        n_test=n_test,
        distill_steps=distill_steps,
    )
    n_variants = len(cfg.variants)
    with progress() as bar:
        # Per seed: 2 full fine-tunes + their evals, then per variant a tune and 3 evals (+ distillation).
        total = 1 + n_variants + len(cfg.seeds) * (4 + n_variants * 4)
        total += len(cfg.seeds) * sum(v.endswith("+distill") for v in cfg.variants)
        job = bar.add_task("experiment", total=total, info="")
        step_job = bar.add_task("  stage", total=1, info="")

        def cb(stage: str, _done: int, _total: int) -> None:
            bar.update(job, advance=1, info=stage)

        def step_cb(stage: str, done: int, total: int) -> None:
            unit = "examples scored" if stage.endswith("eval") else "steps"
            bar.update(step_job, completed=done, total=total, info=f"{stage}: {unit}")

        try:
            report = run_experiment(cfg, progress=cb, log=lambda m: bar.console.print(m), steps=step_cb)
        except (FileNotFoundError, ValueError) as exc:
            fail(str(exc))
    table = Table(title=f"{task} on {model} — accuracy % (mean ± std over {seeds} seeds)")
    for col in ["emulator", *COLUMNS, "CPL ratio"]:
        table.add_column(col)
    for row in format_table(report):
        table.add_row(*row)
    console.print(table)
    for name, row in report["table"].items():
        c = row["checks"]
        console.print(
            f"{name}: plug-in − emulator FT = {c['plugin_minus_emulator_ft']:+.1f} pts; plug-in − full "
            f"zero-shot = {c['plugin_minus_full_zero_shot']:+.1f} pts; recovers "
            f"{100 * (c['recovered_share_of_adapter_ft_gain'] or 0):.0f}% of the adapter-FT gain, "
            f"{100 * (c['recovered_share_of_all_params_ft_gain'] or 0):.0f}% of all-params FT gain"
        )
    console.print(
        f"Total {report['total_seconds']:.0f} s, peak RSS {report['peak_mem_mb']:.0f} MiB. "
        f"Report: {save_report(report, out)}"
    )
