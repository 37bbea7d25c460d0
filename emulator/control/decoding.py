"""Cached decoding steps shared by control-model porting and proxy-tuning: KV-cached batch stepping
over left-padded prompts, and temperature / top-p sampling applied to already-combined scores."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from emulator.evaluate import pad_id


def left_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists into (B, T) input_ids and attention_mask."""
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("every prompt must have at least one token")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s)
        mask[i, width - len(s) :] = 1
    return ids, mask


def prompt_batch(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts tokenised without special tokens and left-padded: (B, T) input_ids and attention_mask."""
    enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    return left_pad(enc, pad_id(tokenizer))


def cache_argument(model: nn.Module) -> str:
    """The forward() keyword of the KV cache: 'cache' in recent transformers, else 'past_key_values'.

    Recent transformers warn (FutureWarning) on every call that passes `past_key_values`.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


class CachedLM:
    """One causal LM stepped over a left-padded batch with its own KV cache (fp32 last-position logits)."""

    def __init__(self, model: nn.Module, **forward_kwargs):
        self.model = model
        self.kwargs = forward_kwargs
        self.cache = None
        self.mask: torch.Tensor | None = None
        self.last_pos: torch.Tensor | None = None
        self.device = next(model.parameters()).device
        self.cache_arg = cache_argument(model)

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=self.mask.to(self.device),
            position_ids=pos.to(self.device),
            use_cache=True,
            **{self.cache_arg: self.cache},
            **self.kwargs,
        )
        self.cache = out[self.cache_arg]
        return out.logits[:, -1].float()

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Run the (B, T) left-padded prompts; return (B, vocab) logits for the next token."""
        self.cache, self.mask = None, mask
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        self.last_pos = pos[:, -1]
        return self._forward(ids, pos)

    @torch.no_grad()
    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        """Append one token per row (B,); return (B, vocab) logits for the token after it."""
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        self.last_pos = self.last_pos + 1
        return self._forward(next_ids.view(-1, 1), self.last_pos.view(-1, 1))


def sample_next(
    scores: torch.Tensor,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next ids (B,) from combined scores (B, V): argmax at temperature 0, else temperature then top-p."""
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1; got {temperature}, {top_p}")
    if temperature == 0:
        return scores.argmax(dim=-1)
    probs = torch.softmax(scores.float() / temperature, dim=-1)
    if top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p  # keep the smallest prefix reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, generator=generator).squeeze(-1)


def take_next(
    scores: torch.Tensor,
    done: torch.Tensor,
    out: list[list[int]],
    pad: int,
    eos: int | None,
    temperature: float,
    top_p: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Pick each row's next id (pad for finished rows), append it to `out`, mark EOS rows in `done`."""
    nxt = sample_next(scores, temperature, top_p, generator)
    nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
    for r, tid in enumerate(nxt.tolist()):
        if not done[r]:
            out[r].append(tid)
    done |= nxt == eos
    return nxt
