"""Training a control model beside a frozen template: cross-entropy of softmax(log_softmax(z_T) + z_C).

Only the control model gets gradients; the template runs forward only (no_grad). The template's
log-probabilities are needed at response positions only, so they can be computed once per local
dataset and reused for every step and round (`template_cache`), which removes the template from the
training loop entirely.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from emulator.data import Example
from emulator.train import (
    TrainStats,
    batches,
    collate,
    encode,
    optimiser_step,
    peak_memory_mb,
    warmup_cosine,
)

Rows = list[tuple[list[int], list[int]]]


def rows_digest(rows: Rows) -> str:
    """SHA-256 of encoded rows: the key of a template log-prob cache."""
    h = hashlib.sha256()
    for ids, labels in rows:
        h.update(repr((ids, labels)).encode())
    return h.hexdigest()


@torch.no_grad()
def template_response_logprobs(
    template: nn.Module, rows: Rows, pad_id: int, batch_size: int = 32
) -> list[torch.Tensor]:
    """Per row, the template's log-probs (n_response, vocab) at the positions that predict response tokens."""
    template.eval()
    device = next(template.parameters()).device
    out: list[torch.Tensor] = []
    for i in range(0, len(rows), batch_size):
        batch = collate(rows[i : i + batch_size], pad_id)
        logits = template(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            use_cache=False,
        ).logits[:, :-1]
        lp = torch.log_softmax(logits.float(), -1).cpu()
        keep = batch["labels"][:, 1:] != -100
        out.extend(lp[r][keep[r]] for r in range(lp.shape[0]))
    return out


def template_cache(
    template: nn.Module, rows: Rows, pad_id: int, path: str | Path | None = None
) -> list[torch.Tensor]:
    """Template log-probs for every row, read from / written to `path` (a .pt file) when given."""
    if path is not None:
        path = Path(path)
        if path.exists():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("digest") == rows_digest(rows):
                return saved["logprobs"]
    lps = template_response_logprobs(template, rows, pad_id)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"digest": rows_digest(rows), "logprobs": lps}, tmp)
        tmp.replace(path)
    return lps


@torch.no_grad()
def _template_lp(template: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    keep = batch["labels"][:, 1:] != -100
    z_t = template(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).logits
    return torch.log_softmax(z_t[:, :-1][keep].float(), -1)


def control_loss(
    control: nn.Module,
    template: nn.Module | None,
    batch: dict[str, torch.Tensor],
    template_lp: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean CE (nats/token) of the combined distribution on response tokens of a collated batch.

    template_lp: (n_response, vocab) cached template log-probs in row-major position order; when
    None the template is run here, without gradients.
    """
    keep = batch["labels"][:, 1:] != -100
    targets = batch["labels"][:, 1:][keep]
    z_c = control(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).logits
    z_c = z_c[:, :-1][keep].float()
    if template_lp is None:
        if template is None:
            raise ValueError("control_loss needs the template or its cached log-probs")
        template_lp = _template_lp(template, batch)
    if template_lp.shape != z_c.shape:
        raise ValueError(
            f"template log-probs {tuple(template_lp.shape)} do not match control logits {tuple(z_c.shape)}"
        )
    return F.cross_entropy(template_lp.to(z_c.device) + z_c, targets.to(z_c.device))


def train_control(
    control: nn.Module,
    template: nn.Module,
    tokenizer,
    examples: list[Example],
    *,
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
    warmup: int = 10,
    cache: bool = True,
    cache_path: str | Path | None = None,
    template_dropout: float = 0.0,
) -> TrainStats:
    """Tune every control-model parameter for `steps` AdamW steps against the frozen template.

    template_dropout: share of response tokens whose template log-probs are replaced by a uniform
    distribution, so the shift also has to stand on its own (helps it transfer to other targets).
    """
    if not 0 <= template_dropout < 1:
        raise ValueError(f"template_dropout must be in [0, 1); got {template_dropout}")
    if not examples:
        raise ValueError("no training examples")
    if control.config.vocab_size != template.config.vocab_size:
        raise ValueError(
            f"control vocabulary ({control.config.vocab_size}) differs from the template's "
            f"({template.config.vocab_size}): a control model is trained on its template's vocabulary"
        )
    torch.manual_seed(seed)
    for p in template.parameters():
        p.requires_grad_(False)
    template.eval()
    params = [p for p in control.parameters()]
    for p in params:
        p.requires_grad_(True)
    rows = encode(tokenizer, examples)
    start = time.perf_counter()
    cached = template_cache(template, rows, tokenizer.pad_token_id, cache_path) if cache else None
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)

    sched = warmup_cosine(opt, steps, warmup)
    control.train()
    device = next(control.parameters()).device
    it = batches(list(range(len(rows))), min(batch_size, len(rows)), seed)
    gen = torch.Generator().manual_seed(seed + 1)
    tokens, ema = 0, None
    for step in range(steps):
        idx = next(it)
        batch = {k: v.to(device) for k, v in collate([rows[i] for i in idx], tokenizer.pad_token_id).items()}
        lp = torch.cat([cached[i] for i in idx]) if cached is not None else None
        if template_dropout:
            if lp is None:
                lp = _template_lp(template, batch)
            # A constant row is the uniform distribution (CE ignores constants); the seed fixes which.
            drop = torch.rand(lp.shape[0], 1, generator=gen) < template_dropout
            lp = lp.masked_fill(drop, 0.0)
        loss = control_loss(control, template, batch, lp)
        optimiser_step(loss, params, opt, sched, step, what="control training")
        tokens += int(batch["attention_mask"].sum())
        ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
    control.eval()
    return TrainStats(
        steps, len(examples), float(ema), time.perf_counter() - start, tokens, peak_memory_mb(device)
    )


@torch.no_grad()
def control_response_loss(
    control: nn.Module, template: nn.Module, tokenizer, examples: list[Example], batch_size: int = 32
) -> float:
    """Mean combined cross-entropy (nats/token) on response tokens, as in training."""
    rows = encode(tokenizer, examples)
    total, count = 0.0, 0
    control.eval()
    for i in range(0, len(rows), batch_size):
        batch = collate(rows[i : i + batch_size], tokenizer.pad_token_id)
        n = int((batch["labels"][:, 1:] != -100).sum())
        if n:
            total += float(control_loss(control, template, batch)) * n
            count += n
    return total / max(count, 1)
