"""Supervised tuning on task examples: loss on response tokens only, AdamW, fixed seeds."""

from __future__ import annotations

import math
import resource
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from emulator.data import Example

Progress = Callable[[int, int, float], None]


def encode(tokenizer, examples: list[Example], max_len: int = 96) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels per example: prompt tokens masked (-100), response + EOS supervised."""
    out = []
    for ex in examples:
        p = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
        r = tokenizer(ex.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (p + r)[-max_len:]
        labels = ([-100] * len(p) + r)[-max_len:]
        out.append((ids, labels))
    return out


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch into input_ids, attention_mask and labels tensors of shape (B, T)."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def supervised_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over supervised tokens (labels != -100), batch of shape (B, T).

    Equal to the model's own `labels=` loss, but the LM head only runs at positions whose next token
    is supervised (`logits_to_keep`): with short responses after long prompts, most of a (B, T, V)
    logits tensor, and the head's multiply-adds, would be computed only to be ignored.
    """
    targets = batch["labels"][:, 1:]
    keep = (targets != -100).any(dim=0).nonzero().squeeze(1)
    if keep.numel() == 0:
        raise ValueError("batch has no supervised tokens (every label is -100)")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits
    return nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets[:, keep].reshape(-1), ignore_index=-100
    )


@dataclass
class TrainStats:
    """What a tuning run reports."""

    steps: int
    examples: int
    loss: float
    seconds: float
    tokens: int
    peak_mem_mb: float

    @property
    def tokens_per_s(self) -> float:
        """Training throughput in tokens per second."""
        return self.tokens / self.seconds if self.seconds else 0.0


def peak_memory_mb(device: torch.device | str = "cpu") -> float:
    """Peak memory in MiB: CUDA max allocated on a GPU, else the process's peak RSS."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def batches(rows: list, batch_size: int, seed: int) -> Iterable[list]:
    """Endless shuffled batches (reshuffled each epoch, seeded)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(rows), generator=gen).tolist()
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield [rows[j] for j in order[i : i + batch_size]]
        if len(order) < batch_size:
            yield [rows[j] for j in order]


def warmup_cosine(opt: torch.optim.Optimizer, steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LR factor rising linearly over `warmup` steps, then cosine decay to 0 at `steps`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def optimiser_step(
    loss: torch.Tensor, params, opt: torch.optim.Optimizer, sched, step: int, what: str = "training"
) -> None:
    """Backward, clip the gradient norm to 1, step optimiser and schedule; a non-finite loss raises."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{what} loss became {loss.item()} at step {step}")
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


def tune(
    model: nn.Module,
    tokenizer,
    examples: list[Example],
    params: list[nn.Parameter],
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
    warmup: int = 10,
    weight_decay: float = 0.0,
    progress: Progress | None = None,
) -> TrainStats:
    """Tune `params` of `model` on examples for `steps` AdamW steps (linear warmup, cosine decay)."""
    if not examples:
        raise ValueError("no training examples")
    if not params:
        raise ValueError("nothing to train: no trainable parameters")
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    rows = encode(tokenizer, examples)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    sched = warmup_cosine(opt, steps, warmup)
    model.train()
    start, tokens, ema = time.perf_counter(), 0, None
    it = batches(rows, min(batch_size, len(rows)), seed)
    for step in range(steps):
        batch = {k: v.to(device) for k, v in collate(next(it), tokenizer.pad_token_id).items()}
        loss = supervised_loss(model, batch)
        optimiser_step(loss, params, opt, sched, step)
        tokens += int(batch["attention_mask"].sum())
        ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
        if progress:
            progress(step + 1, steps, ema)
    model.eval()
    return TrainStats(
        steps, len(examples), float(ema), time.perf_counter() - start, tokens, peak_memory_mb(device)
    )
