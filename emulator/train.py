"""Supervised tuning on task examples: loss on response tokens only, AdamW, fixed seeds."""

from __future__ import annotations

import contextlib
import math
import re
import resource
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from emulator.data import Example
from emulator.evaluate import DEFAULT_CHAT_TEMPLATE, answer_text, prompt_text

Progress = Callable[[int, int, float], None]
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(ValueError):
    """A device or precision setting this machine cannot honour; the message names the key."""


def resolve_device(value: str = "cpu", key: str = "device") -> torch.device:
    """A `device` setting (auto | cpu | cuda | cuda:N) as a torch device this machine has."""
    value = str(value).strip().lower()
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if value == "cpu":
        return torch.device("cpu")
    if not re.fullmatch(r"cuda(:\d+)?", value):
        raise DeviceError(f"{key} must be auto, cpu, cuda or cuda:N; got {value!r}")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise DeviceError(
            f"{key} = {value!r}, but this machine has no usable CUDA device (torch {torch.__version__}, "
            f"{build}); set {key} to cpu or auto"
        )
    index = int(value.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise DeviceError(
            f"{key} = {value!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return torch.device("cuda", index)


def check_precision(precision: str, device: torch.device | str, key: str = "precision") -> torch.dtype:
    """The autocast dtype of a `precision` setting (fp32 | bf16 | fp16), refused where it cannot run."""
    if precision not in PRECISIONS:
        raise DeviceError(f"{key} must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    device = torch.device(device)
    if precision == "fp16" and device.type != "cuda":
        # fp16 needs loss scaling, which we only do on CUDA; CPUs run bf16 natively.
        raise DeviceError(f"{key} = 'fp16' needs a CUDA device (this one is {device}); use bf16 on CPU")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"{key} = 'bf16', but {torch.cuda.get_device_name(device)} has no bf16; use fp16")
    return PRECISIONS[precision]


def autocast(device: torch.device | str, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """Mixed-precision autocast for bf16/fp16 on `device`; a no-op for fp32."""
    dtype = check_precision(precision, device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def store_frozen_in(model: nn.Module, precision: str) -> int:
    """Keep frozen fp32 weights in the precision's dtype (bf16/fp16) to halve their memory; returns how many.

    Only for training under autocast, which computes in that dtype anyway. Trainable parameters, and
    LoRA factors (FFA freezes A but it is still the adapter's), stay fp32.
    """
    dtype = PRECISIONS[precision]
    if dtype == torch.float32:
        return 0
    cast = 0
    for name, p in model.named_parameters():
        if not p.requires_grad and p.dtype == torch.float32 and "lora_" not in name:
            p.data = p.data.to(dtype)
            cast += 1
    return cast


def model_device(model: nn.Module) -> torch.device:
    """The device a model's parameters live on."""
    return next(model.parameters()).device


def encode(
    tokenizer, examples: list[Example], max_len: int = 96, chat_template: str = DEFAULT_CHAT_TEMPLATE
) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels per example: prompt tokens masked (-100), response + EOS supervised.

    With a chat template in use (`chat_template`, see emulator.evaluate), the prompt is a user turn
    and the response the assistant's reply, ended by the tokenizer's EOS (its end-of-turn token).
    """
    out = []
    for ex in examples:
        p = tokenizer(prompt_text(tokenizer, ex.prompt, chat_template), add_special_tokens=False)["input_ids"]
        response = answer_text(tokenizer, ex.response, chat_template)
        r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
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
        return torch.cuda.max_memory_allocated(device) / 2**20
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
    loss: torch.Tensor,
    params,
    opt: torch.optim.Optimizer,
    sched,
    step: int,
    what: str = "training",
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Backward, clip the gradient norm to 1, step optimiser and schedule; a non-finite loss raises.

    With an fp16 `scaler`, the loss is scaled before backward and gradients unscaled before clipping;
    a step whose gradients overflowed is skipped by the scaler (and the scale lowered).
    """
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{what} loss became {loss.item()} at step {step}")
    if scaler is None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
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
    precision: str = "fp32",
    chat_template: str = DEFAULT_CHAT_TEMPLATE,
    proximal: float = 0.0,
) -> TrainStats:
    """Tune `params` of `model` on examples for `steps` AdamW steps (linear warmup, cosine decay).

    The model trains where its parameters are; `precision` bf16/fp16 runs forward and loss under
    autocast (parameters and optimiser state stay in their own dtype), fp16 with a grad scaler.
    `proximal` μ > 0 adds μ/2·‖θ − θ₀‖² towards the parameters as received (FedProx's term), which
    keeps an adapter near what the full model can use.
    """
    if not examples:
        raise ValueError("no training examples")
    if not params:
        raise ValueError("nothing to train: no trainable parameters")
    torch.manual_seed(seed)
    device = model_device(model)
    mixed = autocast(device, precision)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows = encode(tokenizer, examples, chat_template=chat_template)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    anchor = [p.detach().clone() for p in params] if proximal else None

    sched = warmup_cosine(opt, steps, warmup)
    model.train()
    start, tokens, ema = time.perf_counter(), 0, None
    it = batches(rows, min(batch_size, len(rows)), seed)
    for step in range(steps):
        batch = {k: v.to(device) for k, v in collate(next(it), tokenizer.pad_token_id).items()}
        with mixed:
            loss = supervised_loss(model, batch)
        if anchor is not None:
            loss = loss + proximal / 2 * sum((p - a).pow(2).sum() for p, a in zip(params, anchor, strict=True))
        optimiser_step(loss, params, opt, sched, step, scaler=scaler)
        tokens += int(batch["attention_mask"].sum())
        ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
        if progress:
            progress(step + 1, steps, ema)
    model.eval()
    return TrainStats(
        steps, len(examples), float(ema), time.perf_counter() - start, tokens, peak_memory_mb(device)
    )
