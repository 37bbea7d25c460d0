"""The centralised five-number experiment (docs/architecture.md#evaluation-protocol) for one task, model and emulator variants.

For each seed: full zero-shot, emulator zero-shot, emulator fine-tuned, plug-in, and full
fine-tuning (adapter blocks only, and all parameters). Figures are task accuracy in percent.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from emulator.blocks import get_blocks
from emulator.data import Example, load_task, task_split_note
from emulator.derive import EmulatorOptions, derive_emulator
from emulator.diagnostics import gradient_cosine
from emulator.distill import distill, distill_corpus, text_rows
from emulator.evaluate import accuracy, resolve_metric
from emulator.plugin import plug_in_tuned, tunable_adapter
from emulator.recipe import resolve_recipe
from emulator.reference import trainable_copy
from emulator.train import peak_memory_mb, tune
from emulator.zoo import load_model, public_texts

Progress = Callable[[str, int, int], None]


@dataclass
class Variant:
    """One emulator recipe to compare: a method and whether to distil its middle."""

    method: str
    distill: bool = False

    @property
    def name(self) -> str:
        """Display name, e.g. 'crash+distill'."""
        return self.method + ("+distill" if self.distill else "")

    @classmethod
    def parse(cls, text: str) -> Variant:
        """Parse 'uniform', 'crash' or 'crash+distill'."""
        method, _, extra = text.partition("+")
        if extra not in ("", "distill"):
            raise ValueError(f"unknown variant {text!r}; write METHOD or METHOD+distill")
        return cls(method, extra == "distill")


@dataclass
class ExperimentConfig:
    """Everything that defines a centralised experiment run."""

    model: str = "zoo:base"
    task: str = "wn-category"
    variants: list[str] = field(default_factory=lambda: ["uniform", "crash", "crash+distill"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    first: int = 2
    last: int = 2
    keep: int | None = None  # None: about a third of the middle (`emulator.recipe`)
    clustering: str = "balanced"
    share: str | None = None  # None: by model size (`emulator.recipe`)
    steps: int = 100
    lr: float | None = None  # None: by model size (`emulator.recipe`)
    full_lr: float = 3e-4
    batch_size: int = 16
    lora_rank: int = 0
    distill_steps: int = 0  # 0: one pass over the distillation text
    distill_text: str = "self"  # "self": sampled from the full model; or a public text file
    distill_texts: int = 512  # texts sampled for "self"
    distill_loss: str = "lm+nmse"
    distill_lr: float = 1e-4
    calibration_texts: int = 256
    n_train: int | None = None
    n_test: int | None = 300
    all_params: bool = True  # also fine-tune every parameter of the full model (the sixth column)


def _tune_whole(
    model: nn.Module,
    tok,
    train: list[Example],
    params,
    cfg: ExperimentConfig,
    seed: int,
    lr: float,
    progress=None,
):
    return tune(
        model,
        tok,
        train,
        params,
        steps=cfg.steps,
        lr=lr,
        batch_size=cfg.batch_size,
        seed=seed,
        progress=progress,
    )


def _spread(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


class _Runner:
    """One experiment's state: the model, data, emulators, figures and timings, stage by stage."""

    def __init__(self, cfg: ExperimentConfig, progress: Progress | None, log, steps: Progress | None):
        self.full, self.tok = load_model(cfg.model)
        n_blocks = len(get_blocks(self.full))
        recipe, line = resolve_recipe(self.full, cfg.first, cfg.last, cfg.lr, cfg.share, cfg.keep)
        log(line)
        cfg = replace(cfg, lr=recipe.lr, share=recipe.share, keep=recipe.keep)
        self.cfg, self.progress, self.log, self.steps = cfg, progress, log, steps
        self.train = load_task(cfg.task, "train")[: cfg.n_train]
        self.test = load_task(cfg.task, "test")[: cfg.n_test]
        self.metric = resolve_metric(self.test)  # a benchmark's examples carry its metric
        self.adapter_blocks = list(range(cfg.first)) + list(range(n_blocks - cfg.last, n_blocks))
        self.calib = text_rows(self.tok, public_texts(cfg.calibration_texts))
        self.variants = [Variant.parse(v) for v in cfg.variants]
        self.timings: dict[str, list[float]] = {}
        self.results: dict[str, dict[str, list[float]]] = {v.name: {} for v in self.variants} | {"full": {}}
        self.stage = "setup"
        self.emulators: dict[str, object] = {}
        self._distill_rows = None

    def step(self, done: int, total: int, *_: object) -> None:
        """Progress inside the current stage (training steps or scored examples)."""
        if self.steps:
            self.steps(self.stage, done, total)

    def timed(self, stage: str, fn):
        """Run one stage, keep its wall time, report it done."""
        self.stage = stage
        t = time.perf_counter()
        out = fn()
        self.timings.setdefault(stage, []).append(time.perf_counter() - t)
        if self.progress:
            self.progress(stage, 1, 1)
        return out

    def score(self, group: str, key: str, model: nn.Module) -> None:
        """Accuracy (%) of `model` on the test set, kept under results[group][key]."""
        value = self.timed("eval", self.evaluate(model))
        self.results[group].setdefault(key, []).append(value)

    def evaluate(self, model: nn.Module) -> Callable[[], float]:
        """A thunk scoring `model` on the test set by the task's metric (%)."""
        return lambda: accuracy(model, self.tok, self.test, progress=self.step, metric=self.metric)

    def tune(self, stage: str, model: nn.Module, params, seed: int, lr: float) -> None:
        """Tune `params` of `model` for the configured steps."""
        self.timed(
            stage, lambda: _tune_whole(model, self.tok, self.train, params, self.cfg, seed, lr, self.step)
        )

    def derive(self, method: str):
        """An emulator of the full model by `method`, with the run's adapter and middle sizes."""
        options = EmulatorOptions(method, self.cfg.first, self.cfg.last, self.cfg.keep,
                                  clustering=self.cfg.clustering, share=self.cfg.share)  # fmt: skip
        return derive_emulator(self.full, options, calibration=self.calib, tokenizer=self.tok)

    def references(self, seed: int, full_zs: float) -> None:
        """The full-model figures of one seed: zero-shot, FT of the adapter blocks, FT of everything."""
        self.results["full"].setdefault("full zero-shot", []).append(full_zs)
        refs = [("full FT (adapter)", self.adapter_blocks, self.cfg.lr)]
        if self.cfg.all_params:
            refs.append(("full FT (all)", None, self.cfg.full_lr))
        for name, blocks, lr in refs:
            ref, params = trainable_copy(self.full, blocks)
            self.tune(name, ref, params, seed, lr)
            self.score("full", name, ref)
            del ref

    def distill_rows(self):
        """(train, held-out) distillation rows, made once per run (docs/emulators.md#distillation)."""
        if self._distill_rows is None:
            self._distill_rows = self.timed("distillation text", lambda: distill_corpus(
                self.full, self.tok, self.cfg.distill_text, self.cfg.distill_texts, progress=self.step))  # fmt: skip
        return self._distill_rows

    def variant(self, seed: int, v: Variant) -> None:
        """Emulator zero-shot, emulator FT and plug-in of one variant and seed."""
        if v.distill:
            emu = copy.deepcopy(self.emulators.get(Variant(v.method).name) or self.derive(v.method))
            rows, held = self.distill_rows()
            stats = self.timed(f"distill {v.method}", lambda: distill(
                emu, self.full, *rows, steps=self.cfg.distill_steps or None, lr=self.cfg.distill_lr, seed=seed,
                progress=self.step, loss=self.cfg.distill_loss, heldout=held))  # fmt: skip
            self.results[v.name].setdefault("emulator perplexity", []).append(stats["heldout_perplexity"])
        else:
            emu = copy.deepcopy(self.emulators[v.name])
        self.score(v.name, "emulator zero-shot", emu.model)
        cosine = self.timed("gradient cosine", lambda: gradient_cosine(
            self.full, emu, self.tok, self.train, self.cfg.batch_size, seed))  # fmt: skip
        self.results[v.name].setdefault("gradient cosine", []).append(cosine)
        model, params = tunable_adapter(emu, self.cfg.lora_rank)
        self.tune("emulator FT", model, params, seed, self.cfg.lr)
        self.score(v.name, "emulator FT", model)
        self.score(v.name, "plug-in", plug_in_tuned(self.full, emu, model, self.cfg.lora_rank))
        self.log(
            f"seed {seed} {v.name}: " + ", ".join(f"{k} {x[-1]:.1f}" for k, x in self.results[v.name].items())
        )


def run_experiment(
    cfg: ExperimentConfig,
    progress: Progress | None = None,
    log: Callable[[str], None] = print,
    steps: Progress | None = None,
) -> dict:
    """Run every stage for every seed and variant; return the report dict (see `format_table`).

    `progress(stage, 1, 1)` follows finished stages; `steps(stage, done, total)` follows the training
    steps and scored examples inside the current stage.
    """
    t_start = time.perf_counter()
    run = _Runner(cfg, progress, log, steps)
    full_zs = run.timed("full zero-shot eval", run.evaluate(run.full))
    log(f"full zero-shot: {full_zs:.1f}")
    for v in run.variants:
        if not v.distill:
            run.emulators[v.name] = run.timed(f"derive {v.method}", lambda v=v: run.derive(v.method))
    for seed in cfg.seeds:
        run.references(seed, full_zs)
        for v in run.variants:
            run.variant(seed, v)
        log(f"seed {seed} full: " + ", ".join(f"{k} {x[-1]:.1f}" for k, x in run.results["full"].items()))
    report = build_report(
        run.cfg, run.results, run.timings, time.perf_counter() - t_start, len(run.train), len(run.test)
    )
    return report | {"metric": run.metric, "split": task_split_note(cfg.task, len(run.train), len(run.test))}


def build_report(
    cfg: ExperimentConfig, results: dict, timings: dict, seconds: float, n_train: int, n_test: int
) -> dict:
    """Summarise raw per-seed figures into the five-number table (docs/architecture.md#evaluation-protocol) with mean ± spread and target checks."""
    full = {k: _spread(v) for k, v in results["full"].items()}
    zs, ft_ad = full["full zero-shot"]["mean"], full["full FT (adapter)"]["mean"]
    ft_all = full["full FT (all)"]["mean"] if "full FT (all)" in full else None
    table = {}
    for name, stages in results.items():
        if name == "full":
            continue
        row = {k: _spread(v) for k, v in stages.items()}
        row.update(full)
        plug, emu_ft, emu_zs = (
            row["plug-in"]["mean"],
            row["emulator FT"]["mean"],
            row["emulator zero-shot"]["mean"],
        )
        gain = ft_ad - zs
        row["checks"] = {
            "cpl_ratio": emu_zs / zs if zs else None,
            "plugin_minus_emulator_ft": plug - emu_ft,
            "plugin_minus_full_zero_shot": plug - zs,
            "recovered_share_of_adapter_ft_gain": (plug - zs) / gain if gain else None,
            "recovered_share_of_all_params_ft_gain": (plug - zs) / (ft_all - zs)
            if ft_all is not None and ft_all != zs
            else None,
        }
        table[name] = row
    return {
        "config": asdict(cfg),
        "table": table,
        "stage_seconds": {k: {"mean": statistics.fmean(v), "count": len(v)} for k, v in timings.items()},
        "total_seconds": seconds,
        "peak_mem_mb": peak_memory_mb(),
        "n_train": n_train,
        "n_test": n_test,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


COLUMNS = [
    "full zero-shot",
    "emulator zero-shot",
    "emulator FT",
    "plug-in",
    "full FT (adapter)",
    "full FT (all)",
]


def format_table(report: dict) -> list[list[str]]:
    """Rows of strings (variant, the six figures as mean±std, CPL ratio) for printing."""
    rows = []
    for name, row in report["table"].items():
        cells = [f"{row[c]['mean']:.1f}±{row[c]['std']:.1f}" if c in row else "-" for c in COLUMNS]
        ratio = row["checks"]["cpl_ratio"]
        rows.append([name, *cells, f"{ratio:.2f}" if ratio is not None else "-"])
    return rows


def save_report(report: dict, path: str | Path) -> Path:
    """Write the report as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def task_report_path(out: str | Path, task: str) -> Path:
    """Where a suite writes one task's report: beside `out`, the task's name added to its stem."""
    out = Path(out)
    return out.with_name(f"{out.stem}-{task}{out.suffix or '.json'}")


def run_suite(
    cfg: ExperimentConfig,
    tasks: list[str],
    out: str | Path,
    log: Callable[[str], None] = print,
    run: Callable[[ExperimentConfig], dict] | None = None,
) -> dict:
    """Run the experiment on each task (one report each beside `out`) and summarise them with their mean.

    A task whose report already exists with the same settings is read back, not run again, so an
    interrupted suite resumes where it stopped. `run` runs one task (default: `run_experiment`).
    """
    reports = {}
    for task in tasks:
        tcfg, path = replace(cfg, task=task), task_report_path(out, task)
        asked = json.loads(json.dumps(asdict(tcfg)))  # the settings as given, before "auto" resolves
        if path.exists() and _same_settings(json.loads(path.read_text()).get("asked"), asked):
            log(f"{task}: reusing {path} (finished earlier with the same settings)")
            reports[task] = json.loads(path.read_text())
            continue
        log(f"{task}: starting")
        reports[task] = (run(tcfg) if run else run_experiment(tcfg, log=log)) | {"asked": asked}
        save_report(reports[task], path)
    return {"config": asdict(cfg), "tasks": reports, "mean": suite_mean(reports)}


def _same_settings(stored: dict | None, asked: dict) -> bool:
    """Whether a stored task report was asked for with these settings; a setting the report predates
    counts as its default (it was added later, with the old behaviour as its default)."""
    if stored is None:
        return False
    defaults = json.loads(json.dumps(asdict(ExperimentConfig())))
    return all(stored.get(k, defaults[k]) == v for k, v in asked.items())


def recovery(row: dict) -> float | None:
    """(plug-in − full zero-shot) / (full FT of the adapter blocks − full zero-shot); None where full FT
    gained nothing (the share of a loss is no recovery)."""
    gain = row["full FT (adapter)"]["mean"] - row["full zero-shot"]["mean"]
    return row["checks"]["recovered_share_of_adapter_ft_gain"] if gain > 0 else None


def suite_mean(reports: dict[str, dict]) -> dict[str, dict]:
    """Per variant: each column's mean over tasks, and the mean recovery over the tasks where FT gained."""
    variants = next(iter(reports.values()))["table"]
    out = {}
    for name in variants:
        rows = [r["table"][name] for r in reports.values()]
        cols = {
            c: statistics.fmean(row[c]["mean"] for row in rows)
            for c in COLUMNS
            if all(c in row for row in rows)
        }
        recs = [r for r in map(recovery, rows) if r is not None]
        cols["recovery"] = statistics.fmean(recs) if recs else None
        cols["tasks_with_a_gain"] = len(recs)  # recovery is undefined where full FT gained nothing
        out[name] = cols
    return out
