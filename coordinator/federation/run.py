"""A federated run's life outside its rounds: start or resume, keep each round, finish with the report.

Both round loops use it, the plain one (`coordinator.federation.loop`) and SecAgg+'s
(`coordinator.federation.secagg`), so every run gets the same run directory, config.json,
server.log, checkpoints and resume, signed lineage, run store and metrics, and report.json.
"""

from __future__ import annotations

import json
import logging
import secrets
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from coordinator.config import RESUMABLE_CHANGES, ConfigError, FederationConfig
from coordinator.federation.checkpoint import list_checkpoints, load_latest, save_checkpoint
from coordinator.federation.lineage import append_round, round_record
from coordinator.federation.report import build_report, format_summary, save_report
from coordinator.federation.standin import kind_of
from coordinator.federation.standin.bundle import StandIn, prepare_standin, signing_key
from coordinator.ops.observers import Observers
from emulator.data import Example, load_task
from emulator.emulator import Emulator
from emulator.evaluate import accuracy
from emulator.recipe import resolve_recipe
from emulator.reference import trainable_copy
from emulator.train import tune
from emulator.zoo import load_model

log = logging.getLogger("offsite.coordinator")


# --- run directory -----------------------------------------------------------------------------


def run_dir_for(cfg: FederationConfig) -> Path:
    """out-dir/run-name; with no run-name: the newest run when resuming, else a new timestamped one."""
    root = Path(cfg.out_dir).expanduser().resolve()
    if cfg.run_name:
        return root / cfg.run_name
    if cfg.resume and root.is_dir():
        runs = [p for p in root.iterdir() if p.is_dir() and list_checkpoints(p)]
        if runs:
            return max(runs, key=lambda p: p.stat().st_mtime)
    stamp = time.strftime("run-%Y%m%d-%H%M%S")
    path, n = root / stamp, 1
    while path.exists():
        n += 1
        path = root / f"{stamp}-{n}"
    return path


def _check_resumable(saved: dict, cfg: FederationConfig) -> None:
    now = cfg.to_run_config()
    changed = sorted(
        k for k in set(saved) | set(now) if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k)
    )
    if changed:
        raise ConfigError(
            "cannot resume: run-config differs from the checkpointed run in "
            + ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in changed)
        )


# --- adapters and evaluation --------------------------------------------------------------------


def initial_adapter(cfg: FederationConfig, full: nn.Module, emu: Emulator) -> dict[str, torch.Tensor]:
    """Round-0 global adapter of the stand-in's kind."""
    return kind_of(emu).impl().initial_adapter(cfg, full, emu)


def evaluate_server(
    full: nn.Module, emu: Emulator, tok, adapter: dict, lora_rank: int, eval_set: list[Example]
) -> dict[str, float]:
    """Plug-in and emulator-FT accuracy (%) of the adapter on the server's eval set."""
    return kind_of(emu).impl().evaluate(full, emu, tok, adapter, lora_rank, eval_set)


def centralised_reference(
    cfg: FederationConfig, full: nn.Module, tok, adapter_blocks: list[int], eval_set
) -> dict:
    """The centralised full-model reference: read from an experiment report, or tuned here if asked."""
    if cfg.reference_report:
        report = json.loads(Path(cfg.reference_report).expanduser().read_text())
        row = next(iter(report["table"].values()))
        return {
            "accuracy": row["full FT (adapter)"]["mean"],
            "source": str(cfg.reference_report),
            "note": "coordinator.experiment: adapter blocks tuned inside the full model on all training data",
        }
    if not cfg.full_ft_steps:
        return {
            "accuracy": None,
            "source": None,
            "note": "set full-ft-steps or reference-report to fill this",
        }
    ref, params = trainable_copy(full, adapter_blocks)
    train = load_task(cfg.task, "train")
    stats = tune(
        ref, tok, train, params, steps=cfg.full_ft_steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed
    )
    return {
        "accuracy": accuracy(ref, tok, eval_set),
        "source": "tuned in this run",
        "note": f"adapter blocks tuned inside the full model on all {len(train)} training examples, "
        f"{cfg.full_ft_steps} steps ({stats.seconds:.1f} s)",
    }


@dataclass
class Run:
    """A started (or resumed) run: what every round of either round loop reads and extends."""

    cfg: FederationConfig
    run_dir: Path
    obs: Observers
    full: nn.Module
    tok: object
    key: object
    standin: StandIn
    emu: Emulator
    eval_set: list[Example]
    adapter: dict[str, torch.Tensor]
    baseline: dict
    history: list[dict]
    start: int
    strategy_state: dict = field(default_factory=dict)
    stop_reason: str | None = None  # why the run ended before its last round (the ε budget), if it did
    run_id: str = field(default_factory=lambda: secrets.token_hex(16))  # the nonce sites sign; kept on resume

    @property
    def standin_info(self) -> dict:
        """The stand-in's hash, size and recipe, as the report and the run store show it."""
        m = self.emu.manifest
        return {"hash": self.standin.hash, "bytes": self.standin.nbytes, "method": m.method,
                "layout": m.layout, "adapter_blocks": m.adapter_blocks}  # fmt: skip

    def evaluate(self, adapter: dict[str, torch.Tensor]) -> dict[str, float]:
        """Plug-in and emulator-FT accuracy (%) of `adapter` on the server's eval set."""
        return evaluate_server(self.full, self.emu, self.tok, adapter, self.cfg.lora_rank, self.eval_set)


def with_model_recipe(cfg: FederationConfig, full: nn.Module) -> FederationConfig:
    """`cfg` with lr, share and keep left at 0/auto chosen from the full model (emulator.recipe), logged."""
    emulator = cfg.standin == "emulator"
    recipe, line = resolve_recipe(full, cfg.adapter_first, cfg.adapter_last, cfg.lr or None, cfg.share, cfg.keep,
                                  find_blocks=emulator)  # fmt: skip
    if emulator:
        log.info(line)
    return cfg.with_recipe(recipe)


def last_round(cfg: FederationConfig) -> int:
    """The round this invocation stops after: `stop-after` when it comes first, else `rounds`."""
    return cfg.stop_after if cfg.stop_after and cfg.stop_after < cfg.rounds else cfg.rounds


def start_run(cfg: FederationConfig, run_dir: Path, obs: Observers) -> Run:
    """Load the model, prepare and sign the stand-in, and start afresh or resume from the checkpoint."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    state = load_latest(run_dir) if cfg.resume else None
    if state is None and list_checkpoints(run_dir):
        raise ConfigError(f"{run_dir} already holds checkpoints: set resume=true or another run-name")
    full, tok = load_model(cfg.model)
    cfg = with_model_recipe(cfg, full)
    if state is not None:
        _check_resumable(state["config"], cfg)
        log.info("resuming %s after round %d", run_dir, state["round"])
    log.info("run directory %s", run_dir)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_run_config(), indent=2) + "\n")
    key = signing_key(cfg, run_dir)
    standin = prepare_standin(cfg, full, tok, run_dir, key)
    if state is not None and state["standin_hash"] != standin.hash:
        raise ValueError(f"{run_dir}/standin changed since the checkpoint (hash differs): cannot resume")
    emu = standin.load()
    eval_set = load_task(cfg.task, "test")[: cfg.eval_size]
    log.info("stand-in %s… (%s, layout %s, %.1f MB)", standin.hash[:12], cfg.method, emu.manifest.layout,
             standin.nbytes / 1e6)  # fmt: skip
    run = Run(cfg, run_dir, obs, full, tok, key, standin, emu, eval_set, {}, {}, [], 0)
    if state is None:
        run.adapter = initial_adapter(cfg, full, emu)
        run.baseline = {
            "full zero-shot": accuracy(full, tok, eval_set),
            "emulator zero-shot": accuracy(emu.model, emu.tokenizer or tok, eval_set),
        }
        log.info("baseline: %s", run.baseline)
        save_checkpoint(run_dir, _state(run, 0))
    else:
        run.adapter, run.baseline, run.history = state["adapter"], state["baseline"], state["history"]
        run.start, run.strategy_state = state["round"], state["strategy"]
        run.run_id = state.get("run_id", run.run_id)
    obs.run_started(run_dir, cfg.to_run_config(), run.baseline, run.standin_info, run.history)
    return run


def record_round(
    run: Run, entry: dict, previous: dict, aggregator: str, merged: list, strategy_state: dict
) -> None:
    """Keep a finished round: history, signed lineage line, checkpoint, observers."""
    run.history.append(entry)
    run.strategy_state = strategy_state
    append_round(run.run_dir, run.key, round_record(entry["round"], run.standin.hash, previous, run.adapter,
                                                    entry["updated"], aggregator, merged, entry["privacy"]))  # fmt: skip
    save_checkpoint(run.run_dir, _state(run, entry["round"]))
    run.obs.round_finished(entry)


def finish_run(run: Run, privacy: dict | None) -> dict:
    """Final scores, the centralised reference, adapter.safetensors and report.json."""
    cfg, history = run.cfg, run.history
    last = history[-1] if history else None
    final = dict(last) if last and last["plug-in"] is not None else run.evaluate(run.adapter)
    reference = centralised_reference(cfg, run.full, run.tok, run.emu.manifest.adapter_blocks, run.eval_set)
    save_file({k: v.contiguous() for k, v in run.adapter.items()}, str(run.run_dir / "adapter.safetensors"))
    report = build_report(
        cfg.to_run_config(), run.run_dir, run.standin_info, run.baseline, history, final, reference
    )
    report["mode"] = "secagg+" if cfg.secure_aggregation else "plain"
    report["privacy"] = privacy  # final ε (None without DP)
    report["stopped_early"] = run.stop_reason
    path = save_report(report, run.run_dir / "report.json")
    log.info("report %s\n%s", path, format_summary(report))
    run.obs.run_finished(report)
    return report


def server_eval_due(cfg: FederationConfig, rnd: int) -> bool:
    """Whether round `rnd` gets the server's plug-in/emulator evaluation (every `eval-every`, and the last)."""
    return rnd == cfg.rounds or (cfg.eval_every > 0 and rnd % cfg.eval_every == 0)


def _state(run: Run, rnd: int) -> dict:
    return {
        "round": rnd,
        "config": run.cfg.to_run_config(),
        "standin_hash": run.standin.hash,
        "adapter": {k: v.detach().clone() for k, v in run.adapter.items()},
        "baseline": run.baseline,
        "history": run.history,
        "strategy": run.strategy_state,
        "run_id": run.run_id,
    }


def load_adapter(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """The final global adapter a finished run saved (keys `blocks.{i}.…`)."""
    from safetensors.torch import load_file

    return load_file(str(Path(run_dir) / "adapter.safetensors"))


# --- signals -----------------------------------------------------------------------------------


class RunSignalled(BaseException):
    """SIGTERM or SIGINT reached the coordinator during a run (a BaseException, like KeyboardInterrupt)."""

    def __init__(self, signum: int):
        self.signum = signum
        self.stop_reason = f"coordinator received {signal.Signals(signum).name}"  # what the run store shows
        super().__init__(self.stop_reason)


class StopSignals:
    """SIGTERM/SIGINT for the duration of a run: unwind it as RunSignalled, so observers mark it stopped.

    `install()` keeps the handlers it replaces (not ignored ones, nor any outside the main thread);
    `resume(exc)`, once the run is marked, puts them back and lets the signal take its usual course
    (the default action or the previous handler, e.g. Flower's); `restore()` only puts them back.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.previous: dict[int, object] = {}
        self.fired: int | None = None

    @classmethod
    def install(cls) -> StopSignals:
        """Catch SIGTERM and SIGINT from now on (no-op outside the main thread)."""
        self = cls()
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in cls.SIGNALS:
            old = signal.getsignal(sig)
            if old not in (signal.SIG_IGN, None):  # None: a handler set outside Python, not restorable
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame) -> None:
        if self.fired is None:  # a second signal while the run is being marked must not interrupt that
            self.fired = signum
            raise RunSignalled(signum)

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, old in self.previous.items():
            signal.signal(sig, old)
        self.previous = {}

    def resume(self, exc: BaseException) -> None:
        """Restore the handlers; if `exc` is RunSignalled, deliver its signal again to the old disposition."""
        self.restore()
        if isinstance(exc, RunSignalled):
            signal.raise_signal(exc.signum)
