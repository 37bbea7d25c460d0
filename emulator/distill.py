"""Distil an emulator's compressed middle against the full model's middle on text that is not the task.

NMSE = mean(((T − S) / rms(T))²) over real tokens, where T and S are the full model's and the
emulator's hidden states. Three losses (`LOSSES`): "lm+nmse" (LM + λ·NMSE at the hidden state entering
the top adapter blocks, as Offsite-Tuning distils), "nmse" (that NMSE alone) and "layers" (NMSE after
every middle position against the full model's state at the matching depth, plus the top one).
Only the stored middle blocks learn; adapter blocks, embeddings and head stay bit-identical. The
text comes from the owner: sampled from the full model itself (`sample_texts`, no outside data) or
a public text file. With held-out text, the middle kept is the one with the lowest held-out NMSE.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

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


LOSSES = ("lm+nmse", "nmse", "layers")
# Generic openers for self-sampled distillation text: varied registers, no task's wording.
OPENERS = (
    "The", "In", "A", "One of the", "It is", "When", "There are", "Many people", "Scientists",
    "The history of", "How to", "Today", "After the", "This", "Most", "If you", "During", "According to",
    "The city", "Water", "Music", "Children", "The company", "Early in the morning",
)  # fmt: skip


@torch.no_grad()
def sample_texts(
    full: nn.Module,
    tokenizer,
    n: int = 512,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """`n` texts sampled from the full model itself (top-p 0.95) after generic openers: distillation
    text the owner has without any outside corpus, and holding no task data."""
    torch.manual_seed(seed)
    full.eval()
    old_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out: list[str] = []
    try:
        for start in range(0, n, batch):
            openers = [OPENERS[(start + i) % len(OPENERS)] for i in range(min(batch, n - start))]
            enc = tokenizer(openers, return_tensors="pt", padding=True, add_special_tokens=False)
            gen = full.generate(**enc, do_sample=True, top_p=0.95, max_new_tokens=max_new_tokens,
                                pad_token_id=tokenizer.pad_token_id)  # fmt: skip
            out += [o + tokenizer.decode(g, skip_special_tokens=True) for o, g in
                    zip(openers, gen[:, enc["input_ids"].shape[1]:], strict=True)]  # fmt: skip
            if progress:
                progress(len(out), n)
    finally:
        tokenizer.padding_side = old_side
    return out


def read_texts(path: str | Path) -> list[str]:
    """Non-empty lines of a public text file (UTF-8), for distillation; an error names a bad file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"distillation text {path} does not exist")
    try:
        lines = [t for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if len(lines) < 2:
        raise ValueError(f"{path}: needs at least 2 non-empty lines of text, has {len(lines)}")
    return lines


@torch.no_grad()
def perplexity(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch: int = 16
) -> float:
    """exp of the mean next-token loss over the real tokens of (n, T) rows."""
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(input_ids), batch):
        ids, mask = input_ids[s : s + batch], attention_mask[s : s + batch]
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        tgt, m = ids[:, 1:], mask[:, 1:].bool()
        nll = torch.nn.functional.cross_entropy(logits[m], tgt[m], reduction="sum")
        total, count = total + float(nll), count + int(m.sum())
    return math.exp(total / max(count, 1))


def _targets(emulator: Emulator, full: nn.Module, loss: str) -> list[tuple[int, int]]:
    """(emulator hidden-state index, full-model hidden-state index) pairs the NMSE compares."""
    manifest = emulator.manifest
    last = manifest.options.get("last", 0) if manifest.options.get("placement") == "edges" else 0
    first = manifest.options.get("first", 0) if manifest.options.get("placement") == "edges" else 0
    s_top, t_top = len(manifest.layout) - last, num_blocks(full) - last
    if loss != "layers":
        return [(s_top, t_top)]
    m_emu, m_full = s_top - first, t_top - first
    # After emulator middle position k (of m_emu), the full model is k/m_emu of the way through its middle.
    return [(first + k, first + round(k * m_full / m_emu)) for k in range(1, m_emu + 1)]


def _middle_state(emulator: Emulator) -> dict[str, torch.Tensor]:
    return {f"{b}.{n}": t.detach().clone() for b, m in emulator.middle_modules().items()
            for n, t in m.state_dict().items()}  # fmt: skip


def _load_middle(emulator: Emulator, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for b, m in emulator.middle_modules().items():
            for n, t in m.state_dict().items():
                t.copy_(state[f"{b}.{n}"])


@torch.no_grad()
def _heldout_nmse(emulator, full, targets, ids, mask, batch: int = 16) -> float:
    emulator.model.eval()
    total = 0.0
    for s in range(0, len(ids), batch):
        i, m = ids[s : s + batch], mask[s : s + batch]
        t = full(input_ids=i, attention_mask=m, output_hidden_states=True, use_cache=False).hidden_states
        o = emulator.model(
            input_ids=i, attention_mask=m, output_hidden_states=True, use_cache=False
        ).hidden_states
        total += sum(float(nmse(t[b], o[a], m)) for a, b in targets) / len(targets) * len(i)
    emulator.model.train()
    return total / len(ids)


def distill(
    emulator: Emulator,
    full: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    steps: int | None = 200,
    lr: float = 1e-4,
    lam: float = 30.0,
    batch_size: int = 16,
    seed: int = 0,
    progress: Progress | None = None,
    loss: str = "lm+nmse",
    heldout: tuple[torch.Tensor, torch.Tensor] | None = None,
    eval_every: int = 0,
) -> dict:
    """Train the emulator's middle blocks in place; return stats (NMSE, held-out NMSE and perplexity, seconds).

    `steps=None` makes one pass over the rows (each token seen about once). With `heldout` rows,
    held-out NMSE is measured every `eval_every` steps (default: 10 times a run) and the best middle
    is kept.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown distillation loss {loss!r}; choose one of {', '.join(LOSSES)}")
    steps = steps if steps is not None else max(1, math.ceil(len(input_ids) / batch_size))
    targets = _targets(emulator, full, loss)
    params = [p for m in emulator.middle_modules().values() for p in m.parameters()]
    for p in emulator.model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    full.eval()
    emulator.model.train()
    start, history, checks = time.perf_counter(), [], []
    every = eval_every or max(1, steps // 10)
    best = (_heldout_nmse(emulator, full, targets, *heldout), 0, _middle_state(emulator)) if heldout else None
    labels_all = input_ids.masked_fill(attention_mask == 0, -100)
    for step in range(steps):
        idx = torch.randint(0, len(input_ids), (batch_size,), generator=gen)
        ids, mask, labels = input_ids[idx], attention_mask[idx], labels_all[idx]
        with torch.no_grad():
            teacher = full(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        out = emulator.model(
            input_ids=ids, attention_mask=mask, labels=labels, output_hidden_states=True, use_cache=False
        )
        d = sum(nmse(teacher.hidden_states[b].detach(), out.hidden_states[a], mask) for a, b in targets)
        d = d / len(targets)
        total = lam * d + (out.loss if loss == "lm+nmse" else 0.0)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        history.append(d.item())
        if heldout and ((step + 1) % every == 0 or step + 1 == steps):
            checks.append((step + 1, _heldout_nmse(emulator, full, targets, *heldout)))
            if checks[-1][1] < best[0]:
                best = (checks[-1][1], step + 1, _middle_state(emulator))
        if progress:
            progress(step + 1, steps, history[-1])
    if best is not None:
        _load_middle(emulator, best[2])
    for p in emulator.model.parameters():
        p.requires_grad_(False)
    emulator.model.eval()
    k = max(1, steps // 10)
    stats = {
        "steps": steps,
        "loss": loss,
        "lambda": lam,
        "lr": lr,
        "rows": len(input_ids),
        "nmse_start": sum(history[:k]) / k,
        "nmse_end": sum(history[-k:]) / k,
        "seconds": round(time.perf_counter() - start, 2),
    }
    if heldout:
        stats |= {"heldout_nmse": checks, "best_step": best[1], "best_heldout_nmse": best[0],
                  "heldout_perplexity": perplexity(emulator.model, *heldout)}  # fmt: skip
    emulator.manifest.distillation = stats
    return stats


def distill_corpus(
    full: nn.Module, tokenizer, source: str = "self", n: int = 512, max_len: int = 64, seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """(train rows, held-out rows) of distillation text: `source` "self" samples `n` texts from the full
    model; otherwise it is a public text file's path. A tenth (at least one row) is held out."""
    texts = (
        sample_texts(full, tokenizer, n, max_len, seed, progress=progress)
        if source == "self"
        else read_texts(source)
    )
    n_held = max(1, len(texts) // 10)
    return text_rows(tokenizer, texts[n_held:], max_len), text_rows(tokenizer, texts[:n_held], max_len)
