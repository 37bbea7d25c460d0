"""Proxy-tuning: decode a large base model guided by a tuned small expert and its untuned anti-expert.

Scores per step are s_B + alpha * (s_E - s_A) on fp32 last-position logits, then temperature and
top-p. Each model keeps its own KV cache. When the expert is a peft model, expert and anti-expert
are the same weights run as one mixed batch (rows 0..B-1 with the adapter, rows B..2B-1 with
`"__base__"`), so the small model is stepped once per token for both. All three models must share
one vocabulary; for another vocabulary, port a control model instead (emulator.control.port).
"""

from __future__ import annotations

import torch
from torch import nn

from emulator.control.decoding import CachedLM, prompt_batch, take_next
from emulator.data import Example
from emulator.evaluate import pad_id, right_pad


class VocabularyMismatch(ValueError):
    """Proxy-tuning needs one vocabulary for base, expert and anti-expert."""


def check_same_vocab(
    base_tok, small_tok, base: nn.Module | None = None, small: nn.Module | None = None
) -> None:
    """Raise VocabularyMismatch unless the tokenizers (and logits widths) agree exactly."""
    same = len(base_tok) == len(small_tok) and base_tok.get_vocab() == small_tok.get_vocab()
    if same and base is not None and small is not None:
        same = base.get_output_embeddings().weight.shape[0] == small.get_output_embeddings().weight.shape[0]
    if not same:
        raise VocabularyMismatch(
            f"proxy-tuning needs the base and the small models to share one vocabulary "
            f"(base {len(base_tok)} tokens, small {len(small_tok)}); for a model with another "
            "vocabulary train a control model and port it instead: `offsite port` then "
            "`offsite generate --control ...` (emulator.control.port)"
        )


class SmallPair:
    """Expert and anti-expert stepped together: one peft model as a 2B-row mixed batch, or two models."""

    def __init__(self, expert: nn.Module, anti: nn.Module | None = None, adapter: str | None = None):
        self.expert, self.anti = expert, anti
        self.adapter = adapter or getattr(expert, "active_adapter", "default")
        if anti is None and not hasattr(expert, "peft_config"):
            raise ValueError(
                "without an anti-expert model, the expert must be a peft model (its base is the anti-expert)"
            )

    @classmethod
    def split(cls, peft_expert: nn.Module) -> SmallPair:
        """Two plain models from one peft expert: its LoRA merged in, and its base without LoRA.

        Faster per token than the mixed batch where peft's per-layer sub-batch dispatch dominates
        (small models, CPU), at the cost of a second copy of the small model's weights.
        """
        import copy

        if not hasattr(peft_expert, "peft_config"):
            raise ValueError("SmallPair.split needs a peft model (LoRA expert)")
        expert = copy.deepcopy(peft_expert).merge_and_unload().eval()
        anti = copy.deepcopy(peft_expert).unload().eval()
        return cls(expert, anti)

    @property
    def mixed(self) -> bool:
        """Whether expert and anti-expert share weights and run as one batch."""
        return self.anti is None

    def _names(self, b: int) -> list[str]:
        return [self.adapter] * b + ["__base__"] * b

    def start(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefill both on left-padded prompts; (expert, anti) next-token logits, each (B, V)."""
        b = ids.shape[0]
        if self.mixed:
            self.lm = CachedLM(self.expert, adapter_names=self._names(b))
            logits = self.lm.prefill(torch.cat([ids, ids]), torch.cat([mask, mask]))
            return logits[:b], logits[b:]
        self.lm_e, self.lm_a = CachedLM(self.expert), CachedLM(self.anti)
        return self.lm_e.prefill(ids, mask), self.lm_a.prefill(ids, mask)

    def step(self, nxt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append one token per row; (expert, anti) logits for the next."""
        if self.mixed:
            logits = self.lm.step(torch.cat([nxt, nxt]))
            return logits[: nxt.shape[0]], logits[nxt.shape[0] :]
        return self.lm_e.step(nxt), self.lm_a.step(nxt)

    @torch.no_grad()
    def full(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(expert, anti) logits at every position of right-padded sequences, no cache."""
        b = ids.shape[0]
        if self.mixed:
            logits = self.expert(
                input_ids=torch.cat([ids, ids]),
                attention_mask=torch.cat([mask, mask]),
                use_cache=False,
                adapter_names=self._names(b),
            ).logits.float()
            return logits[:b], logits[b:]
        e = self.expert(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        a = self.anti(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        return e, a


def proxy_scores(
    base_logits: torch.Tensor, expert_logits: torch.Tensor, anti_logits: torch.Tensor, alpha: float
) -> torch.Tensor:
    """s_B + alpha * (s_E - s_A) in fp32."""
    return base_logits.float() + alpha * (expert_logits.float() - anti_logits.float())


@torch.no_grad()
def proxy_generate(
    base: nn.Module,
    tokenizer,
    prompts: list[str],
    pair: SmallPair | None,
    *,
    alpha: float = 1.0,
    max_new_tokens: int = 16,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[list[int]]:
    """New token ids per prompt (batched, left-padded); pair=None decodes the base alone the same way."""
    base.eval()
    ids, mask = prompt_batch(tokenizer, prompts)
    pad = pad_id(tokenizer)
    lm = CachedLM(base)
    s_b = lm.prefill(ids, mask)
    if pair is not None:
        s_e, s_a = pair.start(ids, mask)
    gen = torch.Generator().manual_seed(seed)
    done = torch.zeros(len(prompts), dtype=torch.bool)
    out: list[list[int]] = [[] for _ in prompts]
    for _ in range(max_new_tokens):
        scores = s_b if pair is None else proxy_scores(s_b, s_e, s_a, alpha)
        nxt = take_next(scores.cpu(), done, out, pad, tokenizer.eos_token_id, temperature, top_p, gen)
        if bool(done.all()):
            break
        s_b = lm.step(nxt)
        if pair is not None:
            s_e, s_a = pair.step(nxt)
    return out


@torch.no_grad()
def proxy_choice_logprobs(
    base: nn.Module, tokenizer, examples: list[Example], pair: SmallPair, alpha: float = 1.0, batch: int = 32
) -> list[list[float]]:
    """Summed proxy log-prob (nats) of every choice of every multiple-choice example."""
    base.eval()
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    pairs = [(i, enc(ex.prompt), enc(c)) for i, ex in enumerate(examples) for c in ex.choices]
    pad = pad_id(tokenizer)
    scores: list[list[float]] = [[] for _ in examples]
    for s in range(0, len(pairs), batch):
        chunk = pairs[s : s + batch]
        ids, mask = right_pad([p + c for _, p, c in chunk], pad)
        s_b = base(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        s_e, s_a = pair.full(ids, mask)
        lp = torch.log_softmax(proxy_scores(s_b, s_e, s_a, alpha), -1)
        for r, (i, p, c) in enumerate(chunk):
            pos = torch.arange(len(p) - 1, len(p) - 1 + len(c))
            scores[i].append(float(lp[r, pos, torch.tensor(c)].sum()))
    return scores


def proxy_accuracy(
    base: nn.Module, tokenizer, examples: list[Example], pair: SmallPair, alpha: float = 1.0, batch: int = 32
) -> float:
    """The task metric (%) of the proxy-tuned base: MC by proxy log-likelihood, else greedy exact match."""
    if examples[0].kind == "mc":
        scores = proxy_choice_logprobs(base, tokenizer, examples, pair, alpha)
        hits = sum(
            max(range(len(s)), key=s.__getitem__) == ex.answer for s, ex in zip(scores, examples, strict=True)
        )
        return 100.0 * hits / len(examples)
    hits = 0
    for s in range(0, len(examples), batch):
        chunk = examples[s : s + batch]
        new = proxy_generate(base, tokenizer, [e.prompt for e in chunk], pair, alpha=alpha, max_new_tokens=4)
        for ids, ex in zip(new, chunk, strict=True):
            hits += (
                tokenizer.decode(ids, skip_special_tokens=True).split("\n")[0].strip() == ex.target.strip()
            )
    return 100.0 * hits / len(examples)
