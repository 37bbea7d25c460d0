"""The centralised five-number experiment (DESIGN §6) for one task, model and emulator variants.

For each seed: full zero-shot, emulator zero-shot, emulator fine-tuned, plug-in, and full
fine-tuning (adapter blocks only, and all parameters). Figures are task accuracy in percent.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from emulator.blocks import get_blocks
from emulator.data import Example, load_task
from emulator.derive import EmulatorOptions, derive_emulator
from emulator.distill import distill, text_rows
from emulator.evaluate import accuracy
from emulator.plugin import add_lora, lora_state, plug_in, plug_in_lora
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
    keep: int = 3
    steps: int = 100
    lr: float = 1e-3
    full_lr: float = 3e-4
    batch_size: int = 16
    lora_rank: int = 0
    distill_steps: int = 200
    calibration_texts: int = 256
    n_train: int | None = None
    n_test: int | None = 300


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
    full, tok = load_model(cfg.model)
    train = load_task(cfg.task, "train")[: cfg.n_train]
    test = load_task(cfg.task, "test")[: cfg.n_test]
    n_blocks = len(get_blocks(full))
    calib = text_rows(tok, public_texts(cfg.calibration_texts))
    variants = [Variant.parse(v) for v in cfg.variants]
    timings: dict[str, list[float]] = {}
    results: dict[str, dict[str, list[float]]] = {v.name: {} for v in variants}
    results["full"] = {}

    current = ["setup"]

    def sp(done: int, total: int, *_: object) -> None:
        if steps:
            steps(current[0], done, total)

    def timed(stage: str, fn):
        current[0] = stage
        t = time.perf_counter()
        out = fn()
        timings.setdefault(stage, []).append(time.perf_counter() - t)
        if progress:
            progress(stage, 1, 1)
        return out

    def record(group: str, key: str, value: float) -> None:
        results[group].setdefault(key, []).append(value)

    full_zs = timed("full zero-shot eval", lambda: accuracy(full, tok, test, progress=sp))
    log(f"full zero-shot: {full_zs:.1f}")
    adapter_blocks = list(range(cfg.first)) + list(range(n_blocks - cfg.last, n_blocks))
    emulators = {}
    for v in variants:
        if not v.distill:
            emulators[v.name] = timed(
                f"derive {v.method}",
                lambda v=v: derive_emulator(
                    full,
                    EmulatorOptions(v.method, cfg.first, cfg.last, cfg.keep),
                    calibration=calib,
                    tokenizer=tok,
                ),
            )
    for seed in cfg.seeds:
        record("full", "full zero-shot", full_zs)
        # Centralised references: the same adapter blocks tuned inside the full model, and all parameters.
        ref = copy.deepcopy(full)
        blocks = get_blocks(ref)
        for p in ref.parameters():
            p.requires_grad_(False)
        params = [p for b in adapter_blocks for p in blocks[b].parameters()]
        for p in params:
            p.requires_grad_(True)
        timed(
            "full FT (adapter)",
            lambda ref=ref, params=params, seed=seed: _tune_whole(
                ref, tok, train, params, cfg, seed, cfg.lr, sp
            ),
        )
        record(
            "full", "full FT (adapter)", timed("eval", lambda ref=ref: accuracy(ref, tok, test, progress=sp))
        )
        ref = copy.deepcopy(full)
        params = list(ref.parameters())
        for p in params:
            p.requires_grad_(True)
        timed(
            "full FT (all)",
            lambda ref=ref, params=params, seed=seed: _tune_whole(
                ref, tok, train, params, cfg, seed, cfg.full_lr, sp
            ),
        )
        record("full", "full FT (all)", timed("eval", lambda ref=ref: accuracy(ref, tok, test, progress=sp)))
        del ref
        for v in variants:
            if v.distill:
                base_name = Variant(v.method).name
                emu = emulators.get(base_name) or derive_emulator(
                    full,
                    EmulatorOptions(v.method, cfg.first, cfg.last, cfg.keep),
                    calibration=calib,
                    tokenizer=tok,
                )
                emu = copy.deepcopy(emu)
                timed(
                    f"distill {v.method}",
                    lambda emu=emu, seed=seed: distill(
                        emu, full, *calib, steps=cfg.distill_steps, seed=seed, progress=sp
                    ),
                )
            else:
                emu = copy.deepcopy(emulators[v.name])
            record(
                v.name,
                "emulator zero-shot",
                timed("eval", lambda emu=emu: accuracy(emu.model, tok, test, progress=sp)),
            )
            if cfg.lora_rank:
                peft_model = add_lora(emu.model, emu.manifest.adapter_positions, cfg.lora_rank)
                params = [p for p in peft_model.parameters() if p.requires_grad]
                timed(
                    "emulator FT",
                    lambda m=peft_model, params=params, seed=seed: _tune_whole(
                        m, tok, train, params, cfg, seed, cfg.lr, sp
                    ),
                )
                record(
                    v.name,
                    "emulator FT",
                    timed("eval", lambda m=peft_model: accuracy(m, tok, test, progress=sp)),
                )
                plugged = plug_in_lora(full, lora_state(peft_model, emu.manifest.layout), cfg.lora_rank)
            else:
                params = emu.freeze_all_but_adapter()
                timed(
                    "emulator FT",
                    lambda emu=emu, params=params, seed=seed: _tune_whole(
                        emu.model, tok, train, params, cfg, seed, cfg.lr, sp
                    ),
                )
                record(
                    v.name,
                    "emulator FT",
                    timed("eval", lambda emu=emu: accuracy(emu.model, tok, test, progress=sp)),
                )
                plugged = plug_in(full, emu.adapter_state_dict())
            record(v.name, "plug-in", timed("eval", lambda m=plugged: accuracy(m, tok, test, progress=sp)))
            log(
                f"seed {seed} {v.name}: "
                + ", ".join(f"{k} {vals[-1]:.1f}" for k, vals in results[v.name].items())
            )
        log(f"seed {seed} full: " + ", ".join(f"{k} {vals[-1]:.1f}" for k, vals in results["full"].items()))
    return build_report(cfg, results, timings, time.perf_counter() - t_start, len(train), len(test))


def build_report(
    cfg: ExperimentConfig, results: dict, timings: dict, seconds: float, n_train: int, n_test: int
) -> dict:
    """Summarise raw per-seed figures into the DESIGN §6 table with mean ± spread and target checks."""
    full = {k: _spread(v) for k, v in results["full"].items()}
    zs, ft_all, ft_ad = (
        full["full zero-shot"]["mean"],
        full["full FT (all)"]["mean"],
        full["full FT (adapter)"]["mean"],
    )
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
            "recovered_share_of_all_params_ft_gain": (plug - zs) / (ft_all - zs) if ft_all != zs else None,
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
        cells = [f"{row[c]['mean']:.1f}±{row[c]['std']:.1f}" for c in COLUMNS]
        ratio = row["checks"]["cpl_ratio"]
        rows.append([name, *cells, f"{ratio:.2f}" if ratio is not None else "-"])
    return rows


def save_report(report: dict, path: str | Path) -> Path:
    """Write the report as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
