"""Distil an emulator's compressed middle against the full model's middle on public text.

Loss = LM + λ·NMSE, with NMSE = mean(((T − S) / rms(T))²) over real tokens, where T and S are the
full model's and the emulator's hidden states entering the top adapter blocks. Only the stored
middle blocks learn; adapter blocks, embeddings and head stay frozen.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from emulator.blocks import num_blocks
from emulator.emulator import Emulator

Progress = Callable[[int, int, float], None]


def text_rows(tokenizer, texts: list[str], max_len: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise texts into right-padded (n, max_len) input_ids and attention_mask."""
    enc = tokenizer(
        texts,
        max_length=max_len,
        truncation=True,
        padding="max_length",
        return_tensors="pt",
        add_special_tokens=False,
    )
    return enc["input_ids"], enc["attention_mask"]


def nmse(teacher: torch.Tensor, student: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Normalised MSE of (B, T, d) hidden states over unmasked tokens; rms taken per token."""
    rms = teacher.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-6)
    err = ((teacher - student) / rms).pow(2).mean(-1)
    m = mask.float()
    return (err * m).sum() / m.sum().clamp_min(1)


def distill(
    emulator: Emulator,
    full: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    steps: int = 200,
    lr: float = 5e-4,
    lam: float = 30.0,
    batch_size: int = 16,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict:
    """Train the emulator's middle blocks in place; return stats (first/last NMSE, seconds)."""
    manifest = emulator.manifest
    last = manifest.options.get("last", 0) if manifest.options.get("placement") == "edges" else 0
    s_index = len(manifest.layout) - last
    t_index = num_blocks(full) - last
    params = [p for m in emulator.middle_modules().values() for p in m.parameters()]
    for p in emulator.model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    full.eval()
    emulator.model.train()
    start, history = time.perf_counter(), []
    labels_all = input_ids.masked_fill(attention_mask == 0, -100)
    for step in range(steps):
        idx = torch.randint(0, len(input_ids), (batch_size,), generator=gen)
        ids, mask, labels = input_ids[idx], attention_mask[idx], labels_all[idx]
        with torch.no_grad():
            teacher = full(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        out = emulator.model(
            input_ids=ids, attention_mask=mask, labels=labels, output_hidden_states=True, use_cache=False
        )
        d = nmse(teacher.hidden_states[t_index].detach(), out.hidden_states[s_index], mask)
        loss = out.loss + lam * d
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        history.append(d.item())
        if progress:
            progress(step + 1, steps, history[-1])
    for p in emulator.model.parameters():
        p.requires_grad_(False)
    emulator.model.eval()
    k = max(1, steps // 10)
    stats = {
        "steps": steps,
        "lambda": lam,
        "lr": lr,
        "nmse_start": sum(history[:k]) / k,
        "nmse_end": sum(history[-k:]) / k,
        "seconds": round(time.perf_counter() - start, 2),
    }
    manifest.distillation = stats
    return stats
