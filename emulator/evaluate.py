"""Exact task metrics: log-likelihood multiple choice and greedy exact-match generation."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from emulator.data import Example

# How task prompts meet a chat/instruct model's tokenizer: "off" (the default) feeds them as they
# are, "on" wraps each in the tokenizer's chat template (a user turn, then the assistant header),
# "auto" wraps only when the tokenizer has a template. Off by default: task prompts are written as
# completions ("...\nCategory:"), and on zoo:smollm2 raw prompts scored better zero-shot than wrapped
# ones (docs/models.md) while costing fewer tokens; the embedded zoo's tokenizers have no template.
CHAT_TEMPLATE_MODES = ("auto", "on", "off")
DEFAULT_CHAT_TEMPLATE = "off"


def uses_chat_template(tokenizer, mode: str = DEFAULT_CHAT_TEMPLATE) -> bool:
    """Whether prompts are wrapped in the tokenizer's chat template under `mode` (auto | on | off)."""
    if mode not in CHAT_TEMPLATE_MODES:
        raise ValueError(f"chat-template must be one of {', '.join(CHAT_TEMPLATE_MODES)}; got {mode!r}")
    has = bool(getattr(tokenizer, "chat_template", None))
    if mode == "on" and not has:
        raise ValueError("chat-template = 'on', but this model's tokenizer has no chat template")
    return has if mode == "auto" else mode == "on"


def prompt_text(tokenizer, prompt: str, mode: str = DEFAULT_CHAT_TEMPLATE) -> str:
    """The prompt as the model sees it: a user turn plus the assistant header, or unchanged."""
    if not uses_chat_template(tokenizer, mode):
        return prompt
    turn = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)


def answer_text(tokenizer, text: str, mode: str = DEFAULT_CHAT_TEMPLATE) -> str:
    """A response or choice as it follows the prompt (no leading space after a chat header)."""
    return text.lstrip() if uses_chat_template(tokenizer, mode) else text


def encode_prompts(tokenizer, prompts: list[str], mode: str = DEFAULT_CHAT_TEMPLATE) -> list[list[int]]:
    """Token ids of each prompt (chat-wrapped per `mode`), without added special tokens."""
    return [
        tokenizer(prompt_text(tokenizer, p, mode), add_special_tokens=False)["input_ids"] for p in prompts
    ]


def pad_id(tokenizer) -> int:
    """The tokenizer's pad id, or 0 when it has none (padded positions are masked out anyway)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def right_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into (B, T) input_ids and attention_mask tensors."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


# Metrics a task can report (docs/data.md#metrics): multiple choice by summed log-likelihood
# ("acc"), or by log-likelihood per byte of the choice ("acc_norm", as lm-eval-harness defines it),
# and greedy exact match for generation tasks.
METRICS = {
    "acc": "accuracy: the choice with the highest summed log-likelihood",
    "acc_norm": "length-normalised accuracy: log-likelihood divided by the choice's UTF-8 byte length",
    "exact_match": "exact match of the greedy continuation (generation tasks)",
}
# One forward pass holds at most this many padded tokens (prompt rows plus the choice rows that
# reuse their cached prompt), and at most this many fp32 logits (256 MiB): memory stays flat
# whatever the prompt length or vocabulary size.
TOKEN_BUDGET = 8192
LOGIT_BUDGET = 64 * 2**20


def norm_length(choice: str) -> int:
    """What acc_norm divides a choice's log-likelihood by: its UTF-8 bytes, without the joining space."""
    return max(1, len(choice.lstrip().encode("utf-8")))


def best_choice(scores: list[float], choices: tuple[str, ...] | list[str], metric: str = "acc") -> int:
    """Index of the winning choice under `metric` ('acc' or 'acc_norm'); the first one on a tie."""
    if metric == "acc_norm":
        scores = [s / norm_length(c) for s, c in zip(scores, choices, strict=True)]
    elif metric != "acc":
        raise ValueError(f"{metric!r} is not a multiple-choice metric; use acc or acc_norm")
    return max(range(len(scores)), key=scores.__getitem__)


def _groups(order: list[int], prompts: list[list[int]], conts: list[list[list[int]]], vocab: int,
            token_budget: int, logit_budget: int) -> list[list[int]]:  # fmt: skip
    """Consecutive runs of `order` whose padded prompt + choice rows fit both budgets."""
    groups, cur, tp, tc, rows = [], [], 0, 0, 0
    for i in order:
        ntp, ntc = max(tp, len(prompts[i])), max(tc, *(len(c) for c in conts[i]))
        nrows = rows + len(conts[i])
        tokens = (len(cur) + 1) * ntp + nrows * (ntp + ntc)
        if cur and (tokens > token_budget or nrows * ntc * vocab > logit_budget):
            groups.append(cur)
            cur, ntp, ntc, nrows = [], len(prompts[i]), max(len(c) for c in conts[i]), len(conts[i])
        cur.append(i)
        tp, tc, rows = ntp, ntc, nrows
    return groups + [cur] if cur else groups


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at each position of (..., V) logits, without materialising a normalised copy."""
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)


def _score_group(model: nn.Module, prompts: list[list[int]], conts: list[list[list[int]]], pad: int,
                 device) -> list[list[float]]:  # fmt: skip
    """Score one group: prompts left-padded and run once, then every choice on a copy of the cache."""
    n, tp = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((n, tp), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, tp - len(p) :], mask[i, tp - len(p) :] = torch.tensor(p), 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                use_cache=True, logits_to_keep=1)  # fmt: skip
    owner = torch.tensor([i for i, cs in enumerate(conts) for _ in cs])
    flat = [c for cs in conts for c in cs]
    first = _token_logprobs(
        out.logits[owner.to(device), -1], torch.tensor([c[0] for c in flat], device=device)
    )
    totals = first.cpu()
    tc = max(len(c) for c in flat)
    if tc > 1:
        cache = out.cache
        cache.batch_select_indices(owner.to(device))
        cids, cmask = right_pad(flat, pad)
        lengths = mask.sum(-1)[owner]
        cpos = lengths.unsqueeze(-1) + torch.arange(tc)
        out2 = model(input_ids=cids.to(device), attention_mask=torch.cat([mask[owner], cmask], -1).to(device),
                     position_ids=cpos.to(device), cache=cache, use_cache=True)  # fmt: skip
        rest = _token_logprobs(out2.logits[:, :-1], cids[:, 1:].to(device)).cpu() * cmask[:, 1:]
        totals = totals + rest.sum(-1)
    scores: list[list[float]] = [[] for _ in prompts]
    for o, t in zip(owner.tolist(), totals.tolist(), strict=True):
        scores[o].append(t)
    return scores


@torch.no_grad()
def choice_scores(
    model: nn.Module,
    tokenizer,
    prompts: list[list[int]],
    conts: list[list[list[int]]],
    token_budget: int = TOKEN_BUDGET,
    logit_budget: int = LOGIT_BUDGET,
) -> list[list[float]]:
    """Summed log-probability (nats) of every choice's tokens after its prompt: one list per example.

    Each prompt is encoded once and its key/value cache reused by all its choices; batches are cut by
    a token and a logits budget, and only the choices' positions are normalised.
    """
    model.eval()
    device = next(model.parameters()).device
    vocab = model.get_output_embeddings().weight.shape[0]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[float]] = [[] for _ in prompts]
    for group in _groups(order, prompts, conts, vocab, token_budget, logit_budget):
        scored = _score_group(model, [prompts[i] for i in group], [conts[i] for i in group],
                              pad_id(tokenizer), device)  # fmt: skip
        for i, s in zip(group, scored, strict=True):
            out[i] = s
    return out


def encode_choices(tokenizer, examples: list[Example], chat_template: str = DEFAULT_CHAT_TEMPLATE):
    """(prompt ids per example, choice ids per choice per example), as the model scores them."""
    prompts = encode_prompts(tokenizer, [ex.prompt for ex in examples], chat_template)
    conts = [
        [
            tokenizer(answer_text(tokenizer, c, chat_template), add_special_tokens=False)["input_ids"]
            for c in ex.choices
        ]  # fmt: skip
        for ex in examples
    ]
    for ex, cs in zip(examples, conts, strict=True):
        if not all(cs):
            raise ValueError(f"a choice of {ex.prompt[:40]!r} encodes to no tokens")
    return prompts, conts


def mc_hits(
    model: nn.Module,
    tokenizer,
    examples: list[Example],
    metrics: tuple[str, ...] = ("acc",),
    chat_template: str = DEFAULT_CHAT_TEMPLATE,
) -> dict[str, int]:
    """How many multiple-choice examples each metric ('acc', 'acc_norm') gets right, from one scoring pass."""
    scores = choice_scores(model, tokenizer, *encode_choices(tokenizer, examples, chat_template))
    return {
        m: sum(best_choice(s, ex.choices, m) == ex.answer for s, ex in zip(scores, examples, strict=True))
        for m in metrics
    }


def mc_accuracy(
    model: nn.Module,
    tokenizer,
    examples: list[Example],
    chat_template: str = DEFAULT_CHAT_TEMPLATE,
    metric: str = "acc",
) -> float:
    """Share of multiple-choice examples whose best choice under `metric` is the answer (0..1)."""
    return mc_hits(model, tokenizer, examples, (metric,), chat_template)[metric] / len(examples)


@torch.no_grad()
def greedy_continuations(
    model: nn.Module,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 4,
    batch: int = 64,
    chat_template: str = DEFAULT_CHAT_TEMPLATE,
) -> list[str]:
    """Greedy continuation of each prompt (chat-wrapped per `chat_template`), stopping at EOS or a newline."""
    prompts = [prompt_text(tokenizer, p, chat_template) for p in prompts]
    model.eval()
    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outs: list[str] = []
    try:
        for start in range(0, len(prompts), batch):
            enc = tokenizer(
                prompts[start : start + batch], return_tensors="pt", padding=True, add_special_tokens=False
            )
            gen = model.generate(
                input_ids=enc["input_ids"].to(device),
                attention_mask=enc["attention_mask"].to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            for row in gen[:, enc["input_ids"].shape[1] :]:
                outs.append(tokenizer.decode(row, skip_special_tokens=True).split("\n")[0])
    finally:
        tokenizer.padding_side = old_side
    return outs


def exact_match(
    model: nn.Module, tokenizer, examples: list[Example], chat_template: str = DEFAULT_CHAT_TEMPLATE
) -> float:
    """Share of generation examples whose greedy continuation equals the target (whitespace-trimmed)."""
    preds = greedy_continuations(model, tokenizer, [e.prompt for e in examples], chat_template=chat_template)
    return sum(p.strip() == e.target.strip() for p, e in zip(preds, examples, strict=True)) / len(examples)


def resolve_metric(examples: list[Example], metric: str | None = None) -> str:
    """The metric to score `examples` by: `metric` when it fits their kind, else the kind's default."""
    kind = examples[0].kind
    metric = metric or examples[0].metric
    if metric is None:
        return "acc" if kind == "mc" else "exact_match"
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if (metric == "exact_match") != (kind == "gen"):
        raise ValueError(
            f"metric {metric!r} does not fit {'generation' if kind == 'gen' else 'multiple-choice'} examples"
        )
    return metric


def accuracy(
    model: nn.Module,
    tokenizer,
    examples: list[Example],
    progress: Callable[[int, int], None] | None = None,
    chunk: int = 64,
    chat_template: str = DEFAULT_CHAT_TEMPLATE,
    metric: str | None = None,
) -> float:
    """The task's metric in percent: acc / acc_norm for multiple choice, exact match for generation.

    `metric` defaults to the examples' own (a benchmark's), else their kind's (acc or exact_match). With `progress`, examples are
    scored `chunk` at a time and `progress(done, total)` follows them; the figure is the same either
    way (each example scores on its own).
    """
    if not examples:
        raise ValueError("no examples to score")
    metric = resolve_metric(examples, metric)
    if metric == "exact_match":
        fn = partial(exact_match, chat_template=chat_template)
    else:
        fn = partial(mc_accuracy, chat_template=chat_template, metric=metric)
    if progress is None:
        return 100.0 * fn(model, tokenizer, examples)
    hits = 0.0
    for start in range(0, len(examples), chunk):
        part = examples[start : start + chunk]
        hits += fn(model, tokenizer, part) * len(part)
        progress(start + len(part), len(examples))
    return 100.0 * hits / len(examples)
