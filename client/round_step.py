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
from emulator.train import check_precision, resolve_device
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


def site_setting(context: Context, key: str, default: str) -> tuple[str, str]:
    """(value, where it came from) of a key a site may override: node-config wins over run-config."""
    if context.node_config.get(key) not in (None, ""):
        return str(context.node_config[key]), f"node-config {key}"
    return str(context.run_config.get(key, default)), f"run-config {key}"


def compute_settings(context: Context) -> tuple[torch.device, str]:
    """This site's (device, precision): node-config `device`/`precision`, else run-config; checked."""
    device_value, device_key = site_setting(context, "device", "cpu")
    precision, precision_key = site_setting(context, "precision", "fp32")
    device = resolve_device(device_value, key=device_key)
    check_precision(precision, device, key=precision_key)
    return device, precision


# TEST SWITCH, off by default: node-config `test-attack` makes this site a Byzantine one, for the
# poisoning tests and bench.poisoning. A real attacker runs its own code; this only lets the real
# ClientApp stand in for one. It acts after clipping, as an attacker would ignore the clip norm.
TEST_ATTACK_KEY = "test-attack"
TEST_ATTACKS = {
    "none": 1.0,
    "sign-flip": -1.0,  # the honest delta, reversed
    "scale10": 10.0,  # the honest delta, ten times over
}


def apply_test_attack(context: Context, delta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The delta as this site's test switch `test-attack` alters it (unchanged when it is "none")."""
    name = str(context.node_config.get(TEST_ATTACK_KEY, "none") or "none")
    if name not in TEST_ATTACKS:
        raise ValueError(f"node-config {TEST_ATTACK_KEY} must be one of {', '.join(TEST_ATTACKS)}; got {name!r}")
    if name == "none":
        return delta
    log.warning("site %s: test switch %s=%s alters this update", site_of(context), TEST_ATTACK_KEY, name)
    return {k: v * TEST_ATTACKS[name] for k, v in delta.items()}


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
    device, precision = compute_settings(context)
    train_fn = partial(train_adapter, device=device, precision=precision)
    if is_control(emu):  # the stand-in's manifest says what it is; the control model is the adapter
        # The control trainer runs on the CPU in fp32 (it takes no device yet).
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
    delta = apply_test_attack(context, delta)
    log.info(
        "round %s site %s: %d examples, loss %.3f, |delta| %.3g, %.1f s on %s/%s, peak %.0f MiB",
        cfg[S.ROUND], site_of(context), len(examples), update.stats.loss, norm, update.stats.seconds,
        device, precision, update.stats.peak_mem_mb,
    )  # fmt: skip
    return RoundResult(delta, norm, update, examples, seed)
