"""The coordinator's round loop: stand-in, rounds with per-round evaluation and checkpoints, report.

`run_federation(grid, cfg)` is what the ServerApp's `main` runs. It works with any Flower `Grid`
(simulation, deployment, or an in-process grid in tests). Every wait has a timeout.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

import torch
from flwr.app import ConfigRecord
from flwr.serverapp import Grid
from safetensors.torch import save_file
from torch import nn

from coordinator.config import RESUMABLE_CHANGES, ConfigError, FederationConfig
from coordinator.federation.checkpoint import list_checkpoints, load_latest, save_checkpoint
from coordinator.federation.lineage import append_round, round_record
from coordinator.federation.report import build_report, format_summary, save_report
from coordinator.federation.standin import kind_of
from coordinator.federation.standin.bundle import prepare_standin, signing_key
from coordinator.federation.strategy import OffsiteStrategy, make_strategy
from coordinator.ops.observers import Observers, RunObserver
from coordinator.ops.wiring import observers_for
from emulator.blocks import get_blocks
from emulator.data import Example, load_task
from emulator.emulator import Emulator
from emulator.evaluate import accuracy
from emulator.train import tune
from emulator.zoo import load_model
from protocols import codecs
from protocols import schema as S
from protocols.codecs import DARE_SAFE_MAX_ABS
from protocols.records import from_float32_record, to_float32_record

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
    ref = copy.deepcopy(full)
    for p in ref.parameters():
        p.requires_grad_(False)
    blocks = get_blocks(ref)
    params = [p for b in adapter_blocks for p in blocks[b].parameters()]
    for p in params:
        p.requires_grad_(True)
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


# --- configs sent to clients --------------------------------------------------------------------


def train_config(cfg: FederationConfig) -> ConfigRecord:
    """Static train-message config (round, hashes and signatures are added per round)."""
    values = {
        S.LOCAL_STEPS: cfg.local_steps,
        S.LR: cfg.lr,
        S.LORA_RANK: cfg.lora_rank,
        S.SEED: cfg.seed,
        S.TASK: cfg.task,
        S.CODEC: cfg.codec,
        S.BATCH_SIZE: cfg.batch_size,
    }
    run_config = cfg.to_run_config()
    values.update({key: run_config[key] for key in codecs.CODECS[cfg.codec].config_keys.values()})
    # Client-mode DP: sites clip to dp-clip-norm themselves (the coordinator checks it on arrival).
    bounds = (cfg.clip_norm, cfg.dp_clip_norm if cfg.dp == "client" else 0.0)
    clip = min((b for b in bounds if b), default=0.0)
    if clip:
        values[S.CLIP_NORM] = clip
    if cfg.max_examples:
        values[S.MAX_EXAMPLES] = cfg.max_examples
    return ConfigRecord(values)


def evaluate_config(cfg: FederationConfig) -> ConfigRecord:
    """Static evaluate-message config."""
    values = {S.SEED: cfg.seed, S.TASK: cfg.task, S.LORA_RANK: cfg.lora_rank}
    if cfg.max_examples:
        values[S.MAX_EXAMPLES] = cfg.max_examples
    return ConfigRecord(values)


# --- the loop ----------------------------------------------------------------------------------


def _client_eval(
    strategy: OffsiteStrategy, grid: Grid, cfg: FederationConfig, rnd: int, arrays
) -> dict | None:
    messages = list(strategy.configure_evaluate(rnd, arrays, evaluate_config(cfg), grid))
    if not messages:
        return None
    replies = grid.send_and_receive(messages, timeout=cfg.round_timeout)
    metrics = strategy.aggregate_evaluate(rnd, replies)
    if metrics is None:
        return None
    return {**dict(metrics), "per_node": {str(k): v for k, v in strategy.round_log.evaluate.items()}}


def run_federation(
    grid: Grid, cfg: FederationConfig, observers: list[RunObserver] | None = None
) -> dict | None:
    """Run (or resume) a federated offsite-tuning run; return the report, or None if stopped early.

    The run store and metrics named by the run config, plus `observers`, are told of its progress.
    """
    run_dir = run_dir_for(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    obs = observers_for(cfg.store_url, cfg.out_dir, cfg.rounds, cfg.metrics_port)
    obs.observers += observers or []
    handler = logging.FileHandler(run_dir / "server.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("offsite").addHandler(handler)
    try:
        return _run(grid, cfg, run_dir, obs)
    except BaseException as exc:
        obs.run_failed(exc)
        raise
    finally:
        logging.getLogger("offsite").removeHandler(handler)
        handler.close()


def _run(grid: Grid, cfg: FederationConfig, run_dir: Path, obs: Observers) -> dict | None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    state = load_latest(run_dir) if cfg.resume else None
    if state is None and list_checkpoints(run_dir):
        raise ConfigError(f"{run_dir} already holds checkpoints: set resume=true or another run-name")
    if state is not None:
        _check_resumable(state["config"], cfg)
        log.info("resuming %s after round %d", run_dir, state["round"])
    log.info("run directory %s", run_dir)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_run_config(), indent=2) + "\n")

    full, tok = load_model(cfg.model)
    key = signing_key(cfg, run_dir)
    standin = prepare_standin(cfg, full, tok, run_dir, key)
    if state is not None and state["standin_hash"] != standin.hash:
        raise ValueError(f"{run_dir}/standin changed since the checkpoint (hash differs): cannot resume")
    emu = standin.load()
    eval_set = load_task(cfg.task, "test")[: cfg.eval_size]
    log.info("stand-in %s… (%s, layout %s, %.1f MB)", standin.hash[:12], cfg.method, emu.manifest.layout,
             standin.nbytes / 1e6)  # fmt: skip

    if state is None:
        adapter = initial_adapter(cfg, full, emu)
        baseline = {
            "full zero-shot": accuracy(full, tok, eval_set),
            "emulator zero-shot": accuracy(emu.model, emu.tokenizer or tok, eval_set),
        }
        log.info("baseline: %s", baseline)
        history: list[dict] = []
        start = 0
        strategy = make_strategy(cfg, standin, key, adapter)
        save_checkpoint(run_dir, _state(0, cfg, standin.hash, adapter, baseline, history, strategy))
    else:
        adapter, baseline, history, start = (
            state["adapter"],
            state["baseline"],
            state["history"],
            state["round"],
        )
        strategy = make_strategy(cfg, standin, key, adapter)
        strategy.load_state_dict(state["strategy"])
    standin_info = {
        "hash": standin.hash,
        "bytes": standin.nbytes,
        "method": emu.manifest.method,
        "layout": emu.manifest.layout,
        "adapter_blocks": emu.manifest.adapter_blocks,
    }
    obs.run_started(run_dir, cfg.to_run_config(), baseline, standin_info, history)

    arrays = to_float32_record(adapter)
    for rnd in range(start + 1, cfg.rounds + 1):
        t0 = time.perf_counter()
        messages = list(strategy.configure_train(rnd, arrays, train_config(cfg), grid))
        t_sent = time.perf_counter()
        obs.round_started(rnd, [m.metadata.dst_node_id for m in messages])
        replies = list(grid.send_and_receive(messages, timeout=cfg.round_timeout))
        t_replied = time.perf_counter()
        new_arrays, metrics = strategy.aggregate_train(rnd, replies)
        if new_arrays is not None:
            arrays = new_arrays
        previous, adapter = adapter, from_float32_record(arrays)
        evals = (
            evaluate_server(full, emu, tok, adapter, cfg.lora_rank, eval_set)
            if server_eval_due(cfg, rnd)
            else {"plug-in": None, "emulator FT": None}
        )
        client_eval = None
        if cfg.client_eval == "every" or (cfg.client_eval == "final" and rnd == cfg.rounds):
            client_eval = _client_eval(strategy, grid, cfg, rnd, arrays)
        entry = {
            "round": rnd,
            "updated": new_arrays is not None,
            "wall_s": time.perf_counter() - t0,
            "train_s": t_replied - t_sent,
            "query_s": strategy.round_log.query_seconds,
            **evals,
            "train": dict(metrics) if metrics is not None else None,
            "client_eval": client_eval,
            "clients": strategy.round_log.clients(),
            "rejected": len(strategy.round_log.dropped),  # updates that failed validation (dropped)
            "privacy": strategy.privacy_spent(),
        }
        history.append(entry)
        append_round(run_dir, key, round_record(rnd, standin.hash, previous, adapter, new_arrays is not None,
                                                cfg.aggregator, strategy.round_log.merged, entry["privacy"]))  # fmt: skip
        save_checkpoint(run_dir, _state(rnd, cfg, standin.hash, adapter, baseline, history, strategy))
        obs.round_finished(entry)
        log.info("round %d/%d: %d/%d updates, %s, %.1f s", rnd, cfg.rounds, len(strategy.round_log.replies),
                 len(messages), _accuracy_text(evals), entry["wall_s"])  # fmt: skip
        _warn_if_dare_unsafe(cfg, rnd, metrics)
        if cfg.stop_after and rnd == cfg.stop_after and rnd < cfg.rounds:
            log.info("stop-after %d reached: stopping; resume=true continues from this checkpoint", rnd)
            obs.run_stopped(rnd)
            return None

    final = (
        dict(history[-1])
        if history and history[-1]["plug-in"] is not None
        else evaluate_server(full, emu, tok, adapter, cfg.lora_rank, eval_set)
    )
    reference = centralised_reference(cfg, full, tok, emu.manifest.adapter_blocks, eval_set)
    save_file({k: v.contiguous() for k, v in adapter.items()}, str(run_dir / "adapter.safetensors"))
    report = build_report(cfg.to_run_config(), run_dir, standin_info, baseline, history, final, reference)
    report["privacy"] = strategy.privacy_spent()  # final ε (None without DP)
    path = save_report(report, run_dir / "report.json")
    log.info("report %s\n%s", path, format_summary(report))
    obs.run_finished(report)
    return report


def server_eval_due(cfg: FederationConfig, rnd: int) -> bool:
    """Whether round `rnd` gets the server's plug-in/emulator evaluation (every `eval-every`, and the last)."""
    return rnd == cfg.rounds or (cfg.eval_every > 0 and rnd % cfg.eval_every == 0)


def _accuracy_text(evals: dict) -> str:
    if evals["plug-in"] is None:
        return "not evaluated (eval-every)"
    return f"plug-in {evals['plug-in']:.1f}, emulator FT {evals['emulator FT']:.1f}"


def _warn_if_dare_unsafe(cfg: FederationConfig, rnd: int, metrics) -> None:
    """Log the round's largest max|delta|, with a warning when DARE is in use and it is too large."""
    if metrics is None or S.MAX_ABS_DELTA not in metrics:
        return
    largest = float(metrics[S.MAX_ABS_DELTA])
    uses_dare = cfg.codec == "dare" or cfg.aggregator.startswith("dare")
    if uses_dare and largest > DARE_SAFE_MAX_ABS:
        log.warning("round %d: max|delta| %.4g > %.3g: DARE's drop-and-rescale is unreliable on deltas this "
                    "large; lower dare-p/merge-p or local-steps, or use another codec", rnd, largest,
                    DARE_SAFE_MAX_ABS)  # fmt: skip
    else:
        log.info("round %d: max|delta| %.4g", rnd, largest)


def _state(rnd: int, cfg, standin_hash: str, adapter, baseline, history, strategy: OffsiteStrategy) -> dict:
    return {
        "round": rnd,
        "config": cfg.to_run_config(),
        "standin_hash": standin_hash,
        "adapter": {k: v.detach().clone() for k, v in adapter.items()},
        "baseline": baseline,
        "history": history,
        "strategy": strategy.state_dict(),
    }


def load_adapter(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """The final global adapter a finished run saved (keys `blocks.{i}.…`)."""
    from safetensors.torch import load_file

    return load_file(str(Path(run_dir) / "adapter.safetensors"))
