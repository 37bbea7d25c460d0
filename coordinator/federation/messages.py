"""The static parts of the messages the coordinator sends: train and evaluate configs."""

from __future__ import annotations

from flwr.app import ConfigRecord

from coordinator.config import FederationConfig
from protocols import codecs
from protocols import schema as S


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
