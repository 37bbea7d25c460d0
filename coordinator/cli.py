"""The `offsite` command line: build the zoo, derive emulators, plug adapters in, run experiments."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from coordinator.cli_control import generate, port
from coordinator.cli_security import certs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

app = typer.Typer(help="Offsite: tune a large model at sites that never see it.", no_args_is_help=True)
zoo_app = typer.Typer(help="The embedded model zoo (built from WordNet, no network).", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")
app.command("certs")(certs)
app.command("port")(port)
app.command("generate")(generate)
console = Console()


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    )


def _fail(message: str) -> None:
    console.print(f"[red]Error:[/red] {message}")
    raise typer.Exit(2)


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
    with _progress() as bar:
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


@app.command()
def derive(
    out: Annotated[Path, typer.Option(help="Directory to write the emulator to.")],
    model: Annotated[
        str, typer.Option(help="zoo:NAME or a local Hugging Face checkpoint directory.")
    ] = "zoo:base",
    method: Annotated[str, typer.Option(help="crash (default) or uniform.")] = "crash",
    first: Annotated[int, typer.Option(help="Adapter blocks at the bottom.")] = 2,
    last: Annotated[int, typer.Option(help="Adapter blocks at the top.")] = 2,
    keep: Annotated[int, typer.Option(help="Blocks (uniform) or clusters (crash) kept for the middle.")] = 3,
    placement: Annotated[str, typer.Option(help="edges (first/last) or spread (crash only).")] = "edges",
    distill_steps: Annotated[int, typer.Option(help="Distil the middle for this many steps (0: off).")] = 0,
    seed: int = 0,
) -> None:
    """Derive an emulator (stand-in) from a full model and save it with its manifest."""
    from emulator.derive import EmulatorOptions, derive_emulator
    from emulator.distill import distill, text_rows
    from emulator.zoo import load_model, public_texts

    try:
        full, tok = load_model(model)
        options = EmulatorOptions(method, first, last, keep, placement)
        options.check(full.config.num_hidden_layers)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    calib = text_rows(tok, public_texts(256))
    with _progress() as bar:
        task = bar.add_task(
            f"derive {method}", total=1, info="CKA on calibration text" if method == "crash" else ""
        )
        try:
            emu = derive_emulator(full, options, calibration=calib, tokenizer=tok)
        except ValueError as exc:
            _fail(str(exc))
        bar.update(task, completed=1, info="")
        if distill_steps:
            dtask = bar.add_task("distil middle", total=distill_steps, info="")
            distill(
                emu,
                full,
                *calib,
                steps=distill_steps,
                seed=seed,
                progress=lambda s, t, d: bar.update(dtask, completed=s, info=f"nmse {d:.3f}"),
            )
    digest = emu.save(out)
    console.print(
        f"Emulator written to {out}: layout {emu.manifest.layout}, adapter blocks "
        f"{emu.manifest.adapter_blocks}, hash {digest[:16]}…"
    )


@app.command()
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
    with _progress() as bar:
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
            _fail(str(exc))
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


@app.command("run")
def run_federated(
    run_config: Annotated[
        list[str] | None,
        typer.Option(
            "--run-config",
            "-c",
            help="Run-config overrides, as for `flwr run`: 'rounds=5 lora-rank=4' (TOML values).",
        ),
    ] = None,
    supernodes: Annotated[int, typer.Option(help="Virtual SuperNodes (sites) to simulate.")] = 8,
    app_dir: Annotated[
        Path, typer.Option("--app", help="The Flower app (directory with pyproject.toml).")
    ] = Path("."),
    client_cpus: Annotated[int, typer.Option(help="CPUs Ray reserves per ClientApp.")] = 1,
) -> None:
    """Federated offsite-tuning on Flower's simulation engine (Ray); prints the DESIGN §6 numbers."""
    from flwr.common.config import parse_config_args

    from coordinator.config import ConfigError, FederationConfig
    from coordinator.federation import run_dir_for
    from coordinator.simulation import simulate

    if not (app_dir / "pyproject.toml").exists():
        _fail(f"{app_dir.resolve()} has no pyproject.toml; pass the project directory with --app")
    try:
        overrides = parse_config_args(run_config or [])
        cfg = FederationConfig.from_run_config(overrides)
    except (ConfigError, ValueError) as exc:
        _fail(str(exc))
    # Pin the run directory so the report can be found afterwards (absolute: Flower may change cwd).
    run_dir = run_dir_for(cfg)
    overrides |= {"out-dir": str(run_dir.parent), "run-name": run_dir.name}
    console.print(f"Simulating {supernodes} sites; run directory {run_dir}")
    simulate(app_dir, overrides, supernodes, client_cpus=client_cpus)
    report_path = run_dir / "report.json"
    if not report_path.exists():
        _fail(f"the run ended without a report (stopped early or failed); see {run_dir / 'server.log'}")
    report = json.loads(report_path.read_text())
    table = Table("full zero-shot", "emulator zero-shot", "emulator FT", "plug-in", "full FT (centralised)")
    table.add_row(*(f"{v:.1f}" if isinstance(v, float) else "-" for v in report["five_numbers"].values()))
    console.print(table)
    b = report["bytes"]
    console.print(
        f"bytes per client: down {b['down_per_client_with_standin'] or 0:,.0f} with the stand-in, "
        f"{b['down_per_client_without_standin'] or 0:,.0f} without; up {b['up_per_client'] or 0:,.0f}. "
        f"Mean round {report['timing']['round_wall_mean_s']:.1f} s. Report: {report_path}"
    )


@app.command("merge")
def merge_adapters(
    config: Annotated[Path, typer.Argument(help="YAML merge config (mergekit-like); see docs/merging.md.")],
    out: Annotated[Path, typer.Option(help="Directory for the merged Hugging Face checkpoint.")],
    eval_size: Annotated[int, typer.Option(help="Test examples per task to score (0 = all).")] = 300,
) -> None:
    """Merge adapters from several runs or tasks into one model (TIES, DARE-TIES, task arithmetic...)."""
    from coordinator.assets import resolve_model_spec
    from coordinator.merge import MergeConfigError, load_spec, merge, save_merge_report
    from emulator.data import DataError, load_task
    from emulator.evaluate import accuracy
    from emulator.plugin import export_checkpoint
    from emulator.zoo import load_model

    try:
        spec = load_spec(config)
        with console.status(f"Loading {spec.base_model}"):
            full, tok = load_model(resolve_model_spec(spec.base_model))
        with console.status(f"Merging {len(spec.sources)} adapters with {spec.method}"):
            model, stats = merge(spec, full)
        tasks = {name: load_task(name, "test") for name in spec.evaluate}
    except (MergeConfigError, DataError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    export_checkpoint(model, out, tokenizer=tok)
    scores = {}
    with _progress() as bar:
        job = bar.add_task("Scoring the merged model", total=len(tasks), info="")
        for name, examples in tasks.items():
            bar.update(job, info=name)
            scores[name] = accuracy(model, tok, examples[:eval_size] if eval_size else examples)
            bar.advance(job)
    for name, acc in scores.items():
        console.print(f"{name}: {acc:.1f}% accuracy")
    console.print(f"Merged checkpoint: {out}  (report {save_merge_report(out, spec, stats, scores)})")


@app.command("dashboard")
def dashboard(
    store: Annotated[
        str, typer.Option(help="Run store URL, as run-config store-url (default: offsite.db in --out-dir).")
    ] = "",
    out_dir: Annotated[Path, typer.Option(help="The runs' out-dir, for the default store.")] = Path(
        "~/.offsite/runs"
    ),
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8765,
) -> None:
    """Serve the web dashboard: runs, clients per round, curves, bytes, ε; live while runs go on."""
    import uvicorn

    from coordinator.dashboard import create_app
    from coordinator.runstore import StoreError, default_store_url, public_url

    url = store or default_store_url(out_dir)
    try:
        web = create_app(url)
    except StoreError as exc:
        _fail(str(exc))
    console.print(f"Dashboard of {public_url(url)} on http://{host}:{port}/  (Ctrl-C stops it)")
    uvicorn.run(web, host=host, port=port, log_level="warning")


if __name__ == "__main__":
    app()
