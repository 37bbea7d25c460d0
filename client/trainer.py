"""Local tuning of the adapter on the stand-in, and local evaluation; returns deltas, not weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from emulator.data import Example
from emulator.emulator import Emulator
from emulator.evaluate import accuracy
from emulator.plugin import attach_adapter, lora_state, lora_trainable, trained_adapter_names
from emulator.train import TrainStats, collate, encode, supervised_loss, tune


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
) -> LocalUpdate:
    """Tune the adapter from `adapter` for `steps` steps; the delta covers trained tensors only.

    Whole blocks: every adapter-block tensor. LoRA: B only when A is frozen (FFA-LoRA), else A and B.
    """
    model = attach_adapter(emu, adapter, lora_rank)
    if lora_rank == 0:
        params = emu.freeze_all_but_adapter()
    else:
        params = lora_trainable(model, train_lora_a)
    stats = tune(model, emu.tokenizer, examples, params, steps=steps, lr=lr, batch_size=batch_size, seed=seed)
    trained = emu.adapter_state_dict() if lora_rank == 0 else lora_state(model, emu.manifest.layout)
    names = trained_adapter_names(trained, lora_rank, train_lora_a)
    delta = {k: (trained[k].float() - adapter[k].float()) for k in names}
    return LocalUpdate(delta, stats)


@torch.no_grad()
def response_loss(model: nn.Module, tokenizer, examples: list[Example], batch_size: int = 32) -> float:
    """Mean cross-entropy (nats/token) on response tokens, as in training."""
    rows = encode(tokenizer, examples)
    total, count = 0.0, 0
    model.eval()
    for i in range(0, len(rows), batch_size):
        batch = collate(rows[i : i + batch_size], tokenizer.pad_token_id)
        n = int((batch["labels"][:, 1:] != -100).sum())
        if n:
            total += float(supervised_loss(model, batch)) * n
            count += n
    return total / max(count, 1)


def evaluate_adapter(
    emu: Emulator, adapter: dict[str, torch.Tensor], examples: list[Example], lora_rank: int
) -> tuple[float, float]:
    """(accuracy %, response loss) of the emulator carrying the adapter on local examples."""
    model = attach_adapter(emu, adapter, lora_rank)
    return accuracy(model, emu.tokenizer, examples), response_loss(model, emu.tokenizer, examples)
