"""Local tuning of the adapter on the stand-in, and local evaluation; returns deltas, not weights."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from emulator.data import Example
from emulator.emulator import Emulator
from emulator.evaluate import accuracy
from emulator.plugin import attach_adapter, lora_state, lora_trainable, trained_adapter_names
from emulator.train import (
    TrainStats,
    autocast,
    collate,
    encode,
    model_device,
    store_frozen_in,
    supervised_loss,
    tune,
)


@dataclass
class LocalUpdate:
    """What local training produced: the adapter delta and the run's statistics."""

    delta: dict[str, torch.Tensor]
    stats: TrainStats


def train_adapter(
    emu: Emulator,
    adapter: dict[str, torch.Tensor],
    examples: list[Example],
    *,
    lora_rank: int,
    train_lora_a: bool,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> LocalUpdate:
    """Tune the adapter from `adapter` for `steps` steps on `device`; the delta covers trained tensors only.

    Whole blocks: every adapter-block tensor. LoRA: B only when A is frozen (FFA-LoRA), else A and B.
    """
    model = attach_adapter(emu, adapter, lora_rank)
    if lora_rank == 0:
        select = emu.freeze_all_but_adapter
    else:
        select = partial(lora_trainable, model, train_lora_a)
    select()
    # The frozen rest in bf16/fp16 before it moves: half the device memory, the same autocast math.
    store_frozen_in(model, precision)
    model.to(device)
    params = select()
    stats = tune(
        model,
        emu.tokenizer,
        examples,
        params,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        precision=precision,
    )
    trained = emu.adapter_state_dict() if lora_rank == 0 else lora_state(model, emu.manifest.layout)
    names = trained_adapter_names(trained, lora_rank, train_lora_a)
    # Deltas travel from the CPU whatever device trained them.
    delta = {k: (trained[k].float().cpu() - adapter[k].float()) for k in names}
    return LocalUpdate(delta, stats)


@torch.no_grad()
def response_loss(
    model: nn.Module, tokenizer, examples: list[Example], batch_size: int = 32, precision: str = "fp32"
) -> float:
    """Mean cross-entropy (nats/token) on response tokens, as in training."""
    rows = encode(tokenizer, examples)
    total, count = 0.0, 0
    model.eval()
    device = model_device(model)
    for i in range(0, len(rows), batch_size):
        batch = collate(rows[i : i + batch_size], tokenizer.pad_token_id)
        n = int((batch["labels"][:, 1:] != -100).sum())
        if n:
            with autocast(device, precision):
                loss = supervised_loss(model, {k: v.to(device) for k, v in batch.items()})
            total += float(loss) * n
            count += n
    return total / max(count, 1)


def evaluate_adapter(
    emu: Emulator,
    adapter: dict[str, torch.Tensor],
    examples: list[Example],
    lora_rank: int,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> tuple[float, float]:
    """(accuracy %, response loss) of the emulator carrying the adapter on local examples."""
    model = attach_adapter(emu, adapter, lora_rank).to(device)
    with autocast(device, precision):
        acc = accuracy(model, emu.tokenizer, examples)
    return acc, response_loss(model, emu.tokenizer, examples, precision=precision)
