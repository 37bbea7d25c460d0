"""The local round both ClientApp paths share (plain and SecAgg+): data, training, clipping."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import torch
from flwr.app import Context

from client.cache import StandinCache, cache_dir
from client.control_trainer import is_control, train_control_update
from client.local_data import local_examples
from client.privacy import clip_update
from client.trainer import LocalUpdate, train_adapter
from emulator.data import Example
from emulator.emulator import Emulator
from protocols import schema as S
from protocols.seeds import site_seed

log = logging.getLogger("offsite.client")


@dataclass
class RoundResult:
    """One site's round: the clipped delta, its norm before clipping, the training run, its data."""

    delta: dict[str, torch.Tensor]
    norm: float
    update: LocalUpdate
    examples: list[Example]
    seed: int


def site_of(context: Context) -> object:
    """This site's name for seeds and logs: its partition id, else its node id."""
    return context.node_config.get("partition-id", context.node_id)


def cached_standin(context: Context, digest: str) -> Emulator:
    """The stand-in `digest` from this site's cache, ready to train (tokenizer with a pad token)."""
    emu = StandinCache(cache_dir(context.node_config)).load(digest)
    if emu.tokenizer is None:
        raise ValueError(f"stand-in {digest[:12]}… has no tokenizer")
    if emu.tokenizer.pad_token_id is None:
        emu.tokenizer.pad_token = emu.tokenizer.eos_token
    return emu


def local_round(context: Context, cfg: dict, emu: Emulator, adapter: dict[str, torch.Tensor]) -> RoundResult:
    """Tune `adapter` on this site's training split for cfg's steps, then clip the delta to clip-norm."""
    examples = local_examples(
        context.node_config, context.run_config, cfg[S.TASK], "train", cfg[S.SEED], cfg.get(S.MAX_EXAMPLES, 0)
    )
    seed = site_seed(cfg[S.SEED], cfg[S.ROUND], site_of(context))
    train_fn = train_adapter
    if is_control(emu):  # the stand-in's manifest says what it is; the control model is the adapter
        train_fn = partial(train_control_update, cache_root=cache_dir(context.node_config))
    lora_aggregation = cfg.get(S.LORA_AGGREGATION, context.run_config.get("lora-aggregation", "ffa"))
    update = train_fn(
        emu,
        adapter,
        examples,
        lora_rank=cfg[S.LORA_RANK],
        train_lora_a=lora_aggregation == "product",
        steps=cfg[S.LOCAL_STEPS],
        lr=float(cfg[S.LR]),
        batch_size=cfg.get(S.BATCH_SIZE, 16),
        seed=seed,
    )
    delta, norm = clip_update(update.delta, float(cfg.get(S.CLIP_NORM, 0.0)))
    log.info(
        "round %s site %s: %d examples, loss %.3f, |delta| %.3g, %.1f s",
        cfg[S.ROUND], site_of(context), len(examples), update.stats.loss, norm, update.stats.seconds,
    )  # fmt: skip
    return RoundResult(delta, norm, update, examples, seed)
