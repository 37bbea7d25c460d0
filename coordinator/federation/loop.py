"""The coordinator's plain round loop, and `run_federation`, what the ServerApp's `main` runs.

`run_federation(grid, cfg)` works with any Flower `Grid` (simulation, deployment, or an in-process
grid in tests); every wait has a timeout. It starts or resumes the run (`coordinator.federation.run`),
plays the rounds, on the Message API strategy or on SecAgg+'s workflow, and finishes the run.
"""

from __future__ import annotations

import logging
import time

from flwr.app import Context
from flwr.serverapp import Grid
from flwr.serverapp.exception import PrivacyBudgetExhausted

from coordinator.config import FederationConfig
from coordinator.federation.messages import evaluate_config, train_config
from coordinator.federation.run import (
    Run,
    StopSignals,
    finish_run,
    last_round,
    record_round,
    run_dir_for,
    server_eval_due,
    start_run,
)
from coordinator.federation.secagg import play_secure_rounds
from coordinator.federation.strategy import OffsiteStrategy, make_strategy
from coordinator.ops.observers import RunObserver
from coordinator.ops.wiring import observers_for
from protocols import schema as S
from protocols.codecs import DARE_SAFE_MAX_ABS
from protocols.records import from_float32_record, to_float32_record

log = logging.getLogger("offsite.coordinator")


def run_federation(
    grid: Grid,
    cfg: FederationConfig,
    observers: list[RunObserver] | None = None,
    context: Context | None = None,
) -> dict | None:
    """Run (or resume) a federated offsite-tuning run; return the report, or None if stopped early.

    The run store and metrics named by the run config, plus `observers`, are told of its progress.
    SecAgg+ runs (`secure-aggregation`) need the ServerApp's `context` for Flower's legacy workflow.
    """
    run_dir = run_dir_for(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    obs = observers_for(cfg.store_url, cfg.out_dir, cfg.rounds, cfg.metrics_port)
    obs.observers += observers or []
    handler = logging.FileHandler(run_dir / "server.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("offsite").addHandler(handler)
    signals = StopSignals.install()  # SIGTERM/SIGINT mark the run stopped (run_failed), then end it as usual
    try:
        run = start_run(cfg, run_dir, obs)
        if cfg.secure_aggregation:
            privacy = play_secure_rounds(run, grid, context)
        else:
            privacy = play_rounds(run, grid)
        if run.stop_reason is None and run.history and run.history[-1]["round"] < cfg.rounds:
            log.info(
                "stop-after %d reached: stopping; resume=true continues from this checkpoint", cfg.stop_after
            )
            obs.run_stopped(run.history[-1]["round"])
            return None
        return finish_run(run, privacy)
    except BaseException as exc:
        obs.run_failed(exc)
        signals.resume(exc)
        raise
    finally:
        signals.restore()
        logging.getLogger("offsite").removeHandler(handler)
        handler.close()


def play_rounds(run: Run, grid: Grid) -> dict | None:
    """The plain round loop (Message API strategy); returns the privacy spent (None without DP)."""
    strategy = make_strategy(run.cfg, run.standin, run.key, run.adapter, run.run_id)
    strategy.load_state_dict(run.strategy_state)
    arrays = to_float32_record(run.adapter)
    for rnd in range(run.start + 1, last_round(run.cfg) + 1):
        try:
            arrays = play_round(run, strategy, grid, rnd, arrays)
        except PrivacyBudgetExhausted as exc:  # raised before round rnd sends anything
            run.stop_reason = f"dp-max-epsilon {run.cfg.dp_max_epsilon} reached before round {rnd}: {exc}"
            log.warning("%s; the run ends with round %d's adapter", run.stop_reason, rnd - 1)
            break
    return strategy.privacy_spent()


def play_round(run: Run, strategy: OffsiteStrategy, grid: Grid, rnd: int, arrays):
    """One train round (and its evaluations); returns the new global adapter record."""
    cfg = run.cfg
    t0 = time.perf_counter()
    messages = list(strategy.configure_train(rnd, arrays, train_config(cfg), grid))
    t_sent = time.perf_counter()
    run.obs.round_started(rnd, [m.metadata.dst_node_id for m in messages])
    replies = list(grid.send_and_receive(messages, timeout=cfg.round_timeout))
    t_replied = time.perf_counter()
    new_arrays, metrics = strategy.aggregate_train(rnd, replies)
    if new_arrays is not None:
        arrays = new_arrays
    previous, run.adapter = run.adapter, from_float32_record(arrays)
    evals = run.evaluate(run.adapter) if server_eval_due(cfg, rnd) else {"plug-in": None, "emulator FT": None}
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
    record_round(run, entry, previous, cfg.aggregator, strategy.round_log.merged, strategy.state_dict())
    log.info("round %d/%d: %d/%d updates, %s, %.1f s", rnd, cfg.rounds, len(strategy.round_log.replies),
             len(messages), _accuracy_text(evals), entry["wall_s"])  # fmt: skip
    _warn_if_dare_unsafe(cfg, rnd, metrics)
    warn_if_near_round_timeout(cfg, rnd, entry)
    return arrays


NEAR_TIMEOUT = 0.8  # a round that used this share of round-timeout is one slow site from losing updates


def warn_if_near_round_timeout(cfg: FederationConfig, rnd: int, entry: dict) -> str | None:
    """Warn (and return the text) when sites timed out or the round came close to `round-timeout`."""
    late = [row["node"] for row in entry["clients"] if row["status"] == "timeout"]
    if late:
        text = (f"round {rnd}: {len(late)} of {len(entry['clients'])} sites sent nothing within round-timeout "
                f"{cfg.round_timeout:.0f} s, so their updates are lost; slow sites (a large model on CPU, "
                "several sites sharing cores) need a larger round-timeout")  # fmt: skip
    elif entry["train_s"] > NEAR_TIMEOUT * cfg.round_timeout:
        text = (f"round {rnd}: the slowest site answered after {entry['train_s']:.0f} s of the "
                f"{cfg.round_timeout:.0f} s round-timeout; raise round-timeout before a slower round loses "
                "updates")  # fmt: skip
    else:
        return None
    log.warning(text)
    return text


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
