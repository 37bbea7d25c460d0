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


@torch.no_grad()
def choice_logprobs(
    model: nn.Module, tokenizer, prompt_ids: list[list[int]], cont_ids: list[list[int]], batch: int = 64
) -> list[float]:
    """Summed log-probability (nats) of each continuation given its prompt; one float per pair."""
    model.eval()
    pad = pad_id(tokenizer)
    device = next(model.parameters()).device
    scores: list[float] = []
    for start in range(0, len(prompt_ids), batch):
        seqs = [
            p + c
            for p, c in zip(prompt_ids[start : start + batch], cont_ids[start : start + batch], strict=True)
        ]
        ids, mask = right_pad(seqs, pad)
        logits = model(
            input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False
        ).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = ids[:, 1:].to(device)
        tok_lp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        for i, (p, c) in enumerate(
            zip(prompt_ids[start : start + batch], cont_ids[start : start + batch], strict=True)
        ):
            scores.append(float(tok_lp[i, len(p) - 1 : len(p) - 1 + len(c)].sum()))
    return scores


@torch.no_grad()
def next_token_logprobs(
    model: nn.Module, tokenizer, prompt_ids: list[list[int]], batch: int = 64
) -> torch.Tensor:
    """Log-probabilities (n, vocab) of the token after each prompt, computed in right-padded batches."""
    model.eval()
    pad = pad_id(tokenizer)
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prompt_ids), batch):
        chunk = prompt_ids[start : start + batch]
        ids, mask = right_pad(chunk, pad)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        last = torch.tensor([len(s) - 1 for s in chunk], device=device)
        out.append(
            torch.log_softmax(logits[torch.arange(len(chunk), device=device), last].float(), dim=-1).cpu()
        )
    return torch.cat(out)


def mc_accuracy(
    model: nn.Module, tokenizer, examples: list[Example], chat_template: str = DEFAULT_CHAT_TEMPLATE
) -> float:
    """Share of multiple-choice examples whose highest-likelihood choice is the answer (0..1)."""
    enc_prompts = encode_prompts(tokenizer, [ex.prompt for ex in examples], chat_template)
    enc_choices = [
        [
            tokenizer(answer_text(tokenizer, c, chat_template), add_special_tokens=False)["input_ids"]
            for c in ex.choices
        ]
        for ex in examples
    ]
    if all(len(c) == 1 for cs in enc_choices for c in cs):
        # One forward pass per prompt scores every single-token choice at once.
        logp = next_token_logprobs(model, tokenizer, enc_prompts)
        hits = 0
        for i, (ex, cs) in enumerate(zip(examples, enc_choices, strict=True)):
            scores = [float(logp[i, c[0]]) for c in cs]
            hits += max(range(len(cs)), key=scores.__getitem__) == ex.answer
        return hits / len(examples)
    prompts, conts, owners = [], [], []
    for i, (p, cs) in enumerate(zip(enc_prompts, enc_choices, strict=True)):
        for c in cs:
            prompts.append(p)
            conts.append(c)
            owners.append(i)
    scores = choice_logprobs(model, tokenizer, prompts, conts)
    best: dict[int, tuple[float, int]] = {}
    k = 0
    for i, ex in enumerate(examples):
        for j in range(len(ex.choices)):
            if i not in best or scores[k] > best[i][0]:
                best[i] = (scores[k], j)
            k += 1
    return sum(best[i][1] == ex.answer for i, ex in enumerate(examples)) / len(examples)


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


def accuracy(
    model: nn.Module,
    tokenizer,
    examples: list[Example],
    progress: Callable[[int, int], None] | None = None,
    chunk: int = 64,
    chat_template: str = DEFAULT_CHAT_TEMPLATE,
) -> float:
    """The task's metric in percent: MC accuracy or exact match, chosen by the examples' kind.

    With `progress`, examples are scored `chunk` at a time and `progress(done, total)` follows them;
    the figure is the same either way (each example scores on its own).
    """
    if not examples:
        raise ValueError("no examples to score")
    metric = mc_accuracy if examples[0].kind == "mc" else exact_match
    fn = partial(metric, chat_template=chat_template)
    if progress is None:
        return 100.0 * fn(model, tokenizer, examples)
    hits = 0.0
    for start in range(0, len(examples), chunk):
        part = examples[start : start + chunk]
        hits += fn(model, tokenizer, part) * len(part)
        progress(start + len(part), len(examples))
    return 100.0 * hits / len(examples)
