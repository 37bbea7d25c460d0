"""Porting a control model to any causal LM: log_softmax(target) + alpha * centred shift, per token.

Same vocabulary as the control model: the control model reads the target's own token ids. Another
vocabulary: the shift is carried over by a PM-MinED `TokenMap`, and the control model reads the
same *text* in its own tokens (`ControlStream`), re-tokenising only the suffix since the last
boundary where both tokenisations agree and a new word starts. Scoring and decoding go through the
same functions, so "target + control" is measured exactly as the target alone is.
"""

from __future__ import annotations

import codecs
import copy

import torch
from torch import nn

from emulator.control.decoding import CachedLM, cache_argument, prompt_batch, take_next
from emulator.control.token_map import TokenMap
from emulator.control.vocab import Vocab, vocab_from_tokenizer
from emulator.data import Example
from emulator.evaluate import pad_id, right_pad


def centred_shift(control_logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Shift (..., Vt) for the target vocabulary: mapped control logits minus their mean; unmapped get 0.

    index: (Vt,) control id per target id, -1 where unmapped.
    """
    mapped = index >= 0
    z = control_logits.float()[..., index.clamp(min=0)]
    n = mapped.sum().clamp(min=1)
    mean = (z * mapped).sum(-1, keepdim=True) / n
    return (z - mean) * mapped


def ported_logprobs(
    target_logits: torch.Tensor, control_logits: torch.Tensor, index: torch.Tensor, alpha: float = 1.0
) -> torch.Tensor:
    """log_softmax(log_softmax(target) + alpha * centred shift) over the target vocabulary (fp32)."""
    shift = centred_shift(control_logits, index.to(control_logits.device))
    return torch.log_softmax(torch.log_softmax(target_logits.float(), -1) + alpha * shift, -1)


class ControlStream:
    """The control model reading a growing text in its own tokens, with one KV cache, batch 1.

    `extend_bytes` appends what a target token adds to the text. The suffix after the committed
    boundary is re-tokenised; the cache is cropped to the longest prefix that still agrees and only
    the rest is fed. A boundary is committed where a control token starting with whitespace begins
    at a target-token boundary and tokenising both sides separately reproduces the ids.
    """

    def __init__(self, control: nn.Module, tokenizer, vocab: Vocab, text: str):
        if not text:
            raise ValueError("a control stream needs a non-empty prompt text")
        self.model, self.tok, self.vocab = control, tokenizer, vocab
        self.device = next(control.parameters()).device
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self.text = ""
        self.fed: list[int] = []
        self.cache = None
        self.base_ids: list[int] = []
        self.base_chars = 0
        self.boundaries = {0}
        self.logits: torch.Tensor | None = None
        self.fed_tokens = 0  # tokens run through the model so far (for tests and cost figures)
        self.extend_text(text)

    def _encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    @torch.no_grad()
    def _feed(self, ids: list[int]) -> None:
        cache = {cache_argument(self.model): self.cache}  # 'cache' where transformers has it (no FutureWarning)
        out = self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True, **cache)
        self.cache = out.past_key_values
        self.fed.extend(ids)
        self.fed_tokens += len(ids)
        self.logits = out.logits[0, -1].float()

    def extend_bytes(self, data: bytes) -> None:
        """Append the bytes a target token stands for (partial UTF-8 characters wait for the rest)."""
        self.extend_text(self._utf8.decode(data))

    def extend_text(self, piece: str) -> None:
        """Append text and bring the control model's cache up to date."""
        self.text += piece
        self.boundaries.add(len(self.text))
        suffix = self.text[self.base_chars :]
        suffix_ids = self._encode(suffix)
        want = self.base_ids + suffix_ids
        if not want:
            raise ValueError("the control tokenizer produced no tokens for the text")
        if want == self.fed and self.logits is not None:
            return
        common = 0
        for a, b in zip(self.fed, want, strict=False):
            if a != b:
                break
            common += 1
        keep = min(common, len(want) - 1)  # at least one token is fed, to get the next logits
        if keep == 0:
            self.cache, self.fed = None, []
        elif keep < len(self.fed):
            self.cache.crop(keep - len(self.fed))  # transformers 5: a negative count of tokens to drop
            del self.fed[keep:]
        self._feed(want[keep:])
        self._commit(suffix, suffix_ids)

    def _commit(self, suffix: str, suffix_ids: list[int], tries: int = 2) -> None:
        starts = [j for j in range(1, len(suffix_ids)) if self.vocab.surfaces[suffix_ids[j]][:1].isspace()]
        for j in reversed(starts[-tries:]):
            head = self.tok.decode(suffix_ids[:j])
            cut = len(head)
            if suffix[:cut] != head or (self.base_chars + cut) not in self.boundaries:
                continue
            if self._encode(suffix[:cut]) == suffix_ids[:j] and self._encode(suffix[cut:]) == suffix_ids[j:]:
                self.base_ids = self.base_ids + suffix_ids[:j]
                self.base_chars += cut
                return


def _clone_stream(stream: ControlStream) -> ControlStream:
    memo = {id(stream.model): stream.model, id(stream.tok): stream.tok, id(stream.vocab): stream.vocab}
    return copy.deepcopy(stream, memo)


@torch.no_grad()
def _target_continuation_logprobs(
    target: nn.Module, tok, prompts: list[list[int]], conts: list[list[int]], batch: int = 64
) -> list[torch.Tensor]:
    """Target log-probs (len(cont), Vt) at each continuation position, for each (prompt, cont) pair."""
    pad = pad_id(tok)
    device = next(target.parameters()).device
    out = []
    for s in range(0, len(prompts), batch):
        seqs = [p + c for p, c in zip(prompts[s : s + batch], conts[s : s + batch], strict=True)]
        ids, mask = right_pad(seqs, pad)
        logits = target(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        for i, (p, c) in enumerate(zip(prompts[s : s + batch], conts[s : s + batch], strict=True)):
            out.append(logits[i, len(p) - 1 : len(p) - 1 + len(c)].float().cpu())
    return out


@torch.no_grad()
def controlled_choice_logprobs(
    target: nn.Module,
    target_tok,
    control: nn.Module,
    control_tok,
    tmap: TokenMap,
    examples: list[Example],
    alpha: float = 1.0,
) -> list[list[float]]:
    """Summed combined log-prob (nats) of every choice of every multiple-choice example."""
    target.eval()
    control.eval()
    enc = lambda t, s: t(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompts = [enc(target_tok, ex.prompt) for ex in examples]
    pairs = [(i, enc(target_tok, c)) for i, ex in enumerate(examples) for c in ex.choices]
    target_lp = _target_continuation_logprobs(
        target, target_tok, [prompts[i] for i, _ in pairs], [c for _, c in pairs]
    )
    index = tmap.sized(target_lp[0].shape[-1])
    if tmap.is_identity:
        control_logits = _target_continuation_logprobs(
            control, control_tok, [prompts[i] for i, _ in pairs], [c for _, c in pairs]
        )
    else:
        vocab = vocab_from_tokenizer(control_tok)
        target_vocab = vocab_from_tokenizer(target_tok)
        control_logits, streams = [], {}
        for i, cont in pairs:
            if i not in streams:
                streams[i] = ControlStream(control, control_tok, vocab, examples[i].prompt)
            stream, rows = streams[i], []
            if len(cont) > 1:
                stream = _clone_stream(stream)
            for k, token in enumerate(cont):
                rows.append(stream.logits.cpu())
                if k + 1 < len(cont):
                    stream.extend_bytes(target_vocab.surface_bytes(token))
            control_logits.append(torch.stack(rows))
    scores: list[list[float]] = [[] for _ in examples]
    for (i, cont), t_lp, c_lg in zip(pairs, target_lp, control_logits, strict=True):
        lp = ported_logprobs(t_lp, c_lg, index, alpha)
        scores[i].append(float(lp[torch.arange(len(cont)), torch.tensor(cont)].sum()))
    return scores


@torch.no_grad()
def generate_with_control(
    target: nn.Module,
    target_tok,
    control: nn.Module,
    control_tok,
    tmap: TokenMap,
    prompts: list[str],
    *,
    alpha: float = 1.0,
    max_new_tokens: int = 16,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[list[int]]:
    """New target token ids per prompt, decoded from the ported combination (greedy or sampled)."""
    target.eval()
    control.eval()
    ids, mask = prompt_batch(target_tok, prompts)
    pad = pad_id(target_tok)
    t_lm = CachedLM(target)
    t_logits = t_lm.prefill(ids, mask)
    index = tmap.sized(t_logits.shape[-1])
    if tmap.is_identity:
        c_lm = CachedLM(control)
        c_logits = c_lm.prefill(ids, mask)
        streams = None
    else:
        vocab, target_vocab = vocab_from_tokenizer(control_tok), vocab_from_tokenizer(target_tok)
        streams = [ControlStream(control, control_tok, vocab, p) for p in prompts]
        c_logits = torch.stack([s.logits for s in streams])
    gen = torch.Generator().manual_seed(seed)
    eos = target_tok.eos_token_id
    done = torch.zeros(len(prompts), dtype=torch.bool)
    out: list[list[int]] = [[] for _ in prompts]
    for _ in range(max_new_tokens):
        scores = ported_logprobs(t_logits.cpu(), c_logits.cpu(), index, alpha)
        nxt = take_next(scores, done, out, pad, eos, temperature, top_p, gen)
        if bool(done.all()):
            break
        t_logits = t_lm.step(nxt)
        if streams is None:
            c_logits = c_lm.step(nxt)
        else:
            for r, s in enumerate(streams):
                if not done[r]:
                    s.extend_bytes(target_vocab.surface_bytes(int(nxt[r])))
            c_logits = torch.stack([s.logits for s in streams])
    return out


def controlled_accuracy(
    target: nn.Module,
    target_tok,
    control: nn.Module,
    control_tok,
    tmap: TokenMap,
    examples: list[Example],
    alpha: float = 1.0,
    batch: int = 32,
) -> float:
    """The task metric (%) of target + control: MC by combined log-likelihood, else greedy exact match."""
    if examples[0].kind == "mc":
        scores = controlled_choice_logprobs(target, target_tok, control, control_tok, tmap, examples, alpha)
        hits = sum(
            max(range(len(s)), key=s.__getitem__) == ex.answer for s, ex in zip(scores, examples, strict=True)
        )
        return 100.0 * hits / len(examples)
    hits = 0
    for s in range(0, len(examples), batch):
        chunk = examples[s : s + batch]
        new = generate_with_control(
            target,
            target_tok,
            control,
            control_tok,
            tmap,
            [e.prompt for e in chunk],
            alpha=alpha,
            max_new_tokens=4,
        )
        for ids, ex in zip(new, chunk, strict=True):
            text = target_tok.decode(ids, skip_special_tokens=True).split("\n")[0]
            hits += text.strip() == ex.target.strip()
    return 100.0 * hits / len(examples)
