"""`offsite experiment`: the centralised five-number experiment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from coordinator.cli.checks import (
    DISTILL_LOSSES,
    EMULATOR_METHODS,
    MODEL_FORMS,
    TEST_FILE_SEP,
    check_model,
    check_task,
    is_data_file,
)
from coordinator.cli.common import console, fail, progress

METHODS = EMULATOR_METHODS
# How a table's title names the task's metric (emulator.evaluate.METRICS).
METRIC_TITLES = {"acc": "accuracy", "acc_norm": "acc_norm (per-byte accuracy)", "exact_match": "exact match"}


def parse_variants(text: str) -> list[str]:
    """The --variants list, each METHOD or METHOD+distill; exits with the allowed list otherwise."""
    variants = [v.strip() for v in text.split(",") if v.strip()]
    allowed = ", ".join(f"{m}, {m}+distill" for m in METHODS)
    if not variants:
        fail(f"--variants is empty; choose from {allowed}")
    for v in variants:
        method, plus, extra = v.partition("+")
        if method not in METHODS or (plus and extra != "distill"):
            fail(f"--variants: unknown variant {v!r}; choose from {allowed}")
    if len(set(variants)) < len(variants):
        fail(f"--variants lists a variant twice: {text!r}")
    return variants


def experiment(
    task: Annotated[
        str,
        typer.Option(
            help="A task name (wn-category, wn-pos, arc-easy, arc-challenge, piqa, sciq, openbookqa, "
            "hellaswag), 'suite' for every benchmark, or a JSONL/CSV/Parquet file."
        ),
    ] = "wn-category",
    tasks: Annotated[
        str | None,
        typer.Option(help="Comma-separated task names to run one after another, with their mean."),
    ] = None,
    test_file: Annotated[
        Path | None,
        typer.Option(
            help="Test examples for a --task file (default: a seeded 20% of that file is held out)."
        ),
    ] = None,
    model: Annotated[
        str,
        typer.Option(help=f"The full model: {MODEL_FORMS}."),
    ] = "zoo:base",
    variants: Annotated[
        str,
        typer.Option(
            help=f"Comma-separated emulator recipes: {', '.join(METHODS)}, each optionally +distill "
            "(e.g. crash+distill)."
        ),
    ] = "uniform,crash,crash+distill",
    seeds: Annotated[int, typer.Option(min=1, help="Number of seeds (0..n-1).")] = 3,
    steps: Annotated[int, typer.Option(min=1, help="Tuning steps per stage.")] = 100,
    first: Annotated[int, typer.Option(min=0, help="Adapter blocks at the bottom.")] = 2,
    last: Annotated[int, typer.Option(min=0, help="Adapter blocks at the top.")] = 2,
    keep: Annotated[
        int | None,
        typer.Option(
            min=1, help="Middle blocks/clusters kept in the emulator (default: about a third of the middle)."
        ),
    ] = None,
    clustering: Annotated[
        str, typer.Option(help="CRaSh clustering: balanced (≤ ceil(middle/keep) blocks each) or adjacent.")
    ] = "balanced",
    share: Annotated[
        str | None,
        typer.Option(help="CRaSh sharing: full, partial:R (≤ R runs each) or none (default: by model size)."),
    ] = None,
    lr: Annotated[float | None, typer.Option(min=0.0, help="Adapter lr (default: by model size).")] = None,
    lora_rank: Annotated[
        int, typer.Option(min=0, help="Tune LoRA of this rank on the adapter (0: whole blocks).")
    ] = 0,
    distill_steps: Annotated[
        int, typer.Option(min=0, help="Distillation steps for +distill variants (0: one pass over the text).")
    ] = 0,
    distill_text: Annotated[
        str,
        typer.Option(
            help="Distillation text: 'self' (sampled from the full model; no outside data, no task data) "
            "or a public UTF-8 text file, one text a line."
        ),
    ] = "self",
    distill_loss: Annotated[
        str, typer.Option(help="Distillation loss: lm+nmse (LM + 30·NMSE), nmse, or layers (per-layer NMSE).")
    ] = "lm+nmse",
    distill_lr: Annotated[float, typer.Option(min=0.0, help="Distillation learning rate.")] = 1e-4,
    n_test: Annotated[int, typer.Option(min=1, help="Test examples to score (at most).")] = 300,
    all_params: Annotated[
        bool, typer.Option(help="Also fine-tune every parameter of the full model (the last column).")
    ] = True,
    out: Annotated[Path, typer.Option(help="Where to write the JSON report.")] = Path("runs/experiment.json"),
) -> None:
    """Run the centralised five-number experiment and print its table (see docs/architecture.md).

    The defaults (3 variants, 3 seeds, zoo:base) take about 70 minutes on 2 CPU cores;
    --variants crash --seeds 1 takes about 10.
    """
    names = parse_variants(variants)
    suite = parse_tasks(task, tasks)
    for name in suite or [task]:
        check_task(name, "--tasks" if tasks else "--task")
    check_model(model)
    if first + last < 1:
        fail("--first and --last are both 0: the emulator needs at least one adapter block to tune")
    if test_file is not None:
        if suite or not is_data_file(task):
            fail("--test-file goes with a --task data file; embedded tasks have their own test split")
        check_task(str(test_file), "--test-file")
    task_spec = f"{task}{TEST_FILE_SEP}{test_file}" if test_file is not None else task

    from coordinator.experiment import ExperimentConfig, run_experiment, save_report
    from emulator.data import DataError
    from emulator.derive import EmulatorOptions

    try:
        # Only the spelling of the CRaSh options is checked here; sizes are checked against the model later.
        options = EmulatorOptions(
            "crash", first, last, keep or 1, clustering=clustering, share=share or "full"
        )
        options.check(first + last + (keep or 1))
    except ValueError as exc:
        fail(f"--clustering/--share: {exc}")
    check_distillation(distill_text, distill_loss)
    if is_data_file(task):
        _say_split(task, test_file)
    cfg = ExperimentConfig(model=model, task=task_spec, variants=names, seeds=list(range(seeds)), steps=steps,
                           first=first, last=last, keep=keep, lora_rank=lora_rank, n_test=n_test,
                           distill_steps=distill_steps, clustering=clustering, share=share, lr=lr,
                           all_params=all_params, distill_text=distill_text, distill_loss=distill_loss,
                           distill_lr=distill_lr)  # fmt: skip
    if suite:
        return _suite(cfg, suite, out, model, seeds)
    try:
        report = _run(cfg, run_experiment)
    except (FileNotFoundError, ValueError, DataError) as exc:
        fail(str(exc))
    print_results(report, task, model, seeds)
    console.print(
        f"Total {report['total_seconds']:.0f} s, peak RSS {report['peak_mem_mb']:.0f} MiB. "
        f"Report: {save_report(report, out)}",
        highlight=False,
    )


def check_distillation(text: str, loss: str) -> None:
    """Refuse an unknown distillation loss or a text file that does not exist, before any model loads."""
    if loss not in DISTILL_LOSSES:
        fail(f"--distill-loss: unknown loss {loss!r}; choose one of {', '.join(DISTILL_LOSSES)}")
    if text != "self" and not Path(text).expanduser().is_file():
        fail(f"--distill-text: {text} is neither 'self' nor an existing text file")


def parse_tasks(task: str, tasks: str | None) -> list[str] | None:
    """The tasks of a suite run (--task suite or --tasks a,b), or None for a single-task run."""
    from emulator.benchmarks.specs import BENCHMARKS, SUITE

    if tasks is not None:
        names = [t.strip() for t in tasks.split(",") if t.strip()]
        if not names:
            fail("--tasks is empty; name tasks separated by commas")
        if len(set(names)) < len(names):
            fail(f"--tasks lists a task twice: {tasks!r}")
        if any(is_data_file(t) for t in names):
            fail("--tasks takes task names; run a data file with --task FILE")
        return names
    return list(BENCHMARKS) if task == SUITE else None


def _suite(cfg, tasks: list[str], out: Path, model: str, seeds: int) -> None:
    from coordinator.experiment import run_experiment, run_suite, save_report
    from emulator.data import DataError

    try:
        report = run_suite(cfg, tasks, out, log=lambda m: console.print(m, highlight=False),
                           run=lambda c: _run(c, run_experiment))  # fmt: skip
    except (FileNotFoundError, ValueError, DataError) as exc:
        fail(str(exc))
    for name, rep in report["tasks"].items():
        print_results(rep, name, model, seeds)
    print_suite_mean(report, model)
    console.print(f"Suite report: {save_report(report, out)}", highlight=False)


def print_suite_mean(report: dict, model: str) -> None:
    """The mean over the suite's tasks of each column and of the per-task recovery."""
    from coordinator.experiment import COLUMNS

    tasks = list(report["tasks"])
    table = Table(title=f"Mean over {len(tasks)} tasks on {model} ({', '.join(tasks)})")
    for col in ["emulator", *COLUMNS, "recovery"]:
        table.add_column(col, overflow="fold")
    for name, cols in report["mean"].items():
        rec = cols.get("recovery")
        table.add_row(name, *(f"{cols[c]:.1f}" if c in cols else "-" for c in COLUMNS),
                      f"{100 * rec:.0f}%" if rec is not None else "-")  # fmt: skip
    console.print(table)
    console.print(
        "recovery: (plug-in − full zero-shot) / (full FT of the adapter blocks − full zero-shot), per task, "
        "then averaged over the tasks where full FT gained.",
        highlight=False,
    )


def _say_split(task: str, test_file: Path | None) -> None:
    from emulator.data import held_out_split, load_examples, split_note

    try:
        if test_file is not None:
            console.print(f"Training on {task}, testing on {test_file}", highlight=False)
            return
        train, test = held_out_split(load_examples(task))
    except ValueError as exc:
        fail(str(exc))
    console.print(
        split_note(task, len(train), len(test)) + "; --test-file chooses the test set", highlight=False
    )


def _run(cfg, run_experiment) -> dict:
    n_variants = len(cfg.variants)
    with progress() as bar:
        # Per seed: 2 full fine-tunes + their evals, then per variant a tune and 3 evals (+ distillation).
        total = 1 + n_variants + len(cfg.seeds) * (2 + 2 * cfg.all_params + n_variants * 4)
        total += len(cfg.seeds) * sum(v.endswith("+distill") for v in cfg.variants)
        job = bar.add_task("experiment", total=total, info="")
        step_job = bar.add_task("  stage", total=1, info="")

        def cb(stage: str, _done: int, _total: int) -> None:
            bar.update(job, advance=1, info=f"stages done, last: {stage}")

        def step_cb(stage: str, done: int, total: int) -> None:
            unit = "examples scored" if stage.endswith("eval") else "steps"
            bar.update(step_job, completed=done, total=total, info=f"{stage}: {unit}")

        return run_experiment(cfg, progress=cb, log=lambda m: bar.console.print(m, highlight=False),
                              steps=step_cb)  # fmt: skip


def _cell(stat: dict, spread: bool) -> str:
    return f"{stat['mean']:.1f}±{stat['std']:.1f}" if spread else f"{stat['mean']:.1f}"


def print_results(report: dict, task: str, model: str, seeds: int) -> None:
    """The table (no ± with one seed), a footnote for '-' cells, and each variant's recovery line."""
    from coordinator.experiment import COLUMNS, recovery

    spread = seeds > 1
    n_test = report.get("n_test")
    metric = METRIC_TITLES.get(report.get("metric", "acc"), "accuracy")
    what = f"{metric} % on {n_test} test examples" if n_test else f"{metric} %"
    how = f"mean ± std over {seeds} seeds" if spread else "one seed"
    table = Table(title=f"{task} on {model} — {what} ({how})")
    for col in ["emulator", *COLUMNS, "CPL ratio", "recovery", "grad cos"]:
        # Never cut a cell to 'emulat…': fold long ones instead.
        table.add_column(col, overflow="fold")
    missing = False
    for name, row in report["table"].items():
        ratio, rec = row["checks"]["cpl_ratio"], recovery(row)
        missing |= ratio is None
        cos = row.get("gradient cosine")
        table.add_row(name, *(_cell(row[c], spread) if c in row else "-" for c in COLUMNS),
                      f"{ratio:.2f}" if ratio is not None else "-¹", f"{100 * rec:.0f}%" if rec is not None else "-",
                      f"{cos['mean']:.2f}" if cos else "-")  # fmt: skip
    console.print(table)
    console.print(
        "CPL ratio: emulator zero-shot / full zero-shot. recovery: (plug-in − full zero-shot) / (full FT "
        "(adapter) − full zero-shot). grad cos: cosine between the adapter's task gradient through the "
        "emulator and through the full model, before tuning.",
        highlight=False,
    )
    if missing:
        console.print("¹ no ratio: the full model scores 0 zero-shot.", highlight=False)
    if report.get("split"):
        console.print(report["split"], highlight=False)
    for name, row in report["table"].items():
        console.print(recovery_line(name, row), highlight=False)


def _share(share: float | None, gain: float, of: str) -> str:
    if share is None or gain <= 0:
        return f"no {of} gain to recover (full FT: {gain:+.1f} pts over zero-shot)"
    return f"recovers {100 * share:.0f}% of the {of} gain"


def recovery_line(name: str, row: dict) -> str:
    """One variant's checks in words: plug-in against emulator FT and zero-shot, and the recovered gain."""
    c, zs = row["checks"], row["full zero-shot"]["mean"]
    return (
        f"{name}: plug-in − emulator FT = {c['plugin_minus_emulator_ft']:+.1f} pts; plug-in − full "
        f"zero-shot = {c['plugin_minus_full_zero_shot']:+.1f} pts; "
        f"{_share(c['recovered_share_of_adapter_ft_gain'], row['full FT (adapter)']['mean'] - zs, 'adapter-FT')}, "
        + (
            _share(
                c["recovered_share_of_all_params_ft_gain"], row["full FT (all)"]["mean"] - zs, "all-params FT"
            )
            if "full FT (all)" in row
            else "all-params FT not run"
        )
    )
