"""Porting: the centred shift, the text-synced control stream, and cached decoding vs full recompute."""

from __future__ import annotations

import pytest
import torch

from emulator.control.model import control_config, new_control_model
from emulator.control.port import (
    ControlStream,
    centred_shift,
    controlled_accuracy,
    generate_with_control,
    ported_logprobs,
)
from emulator.control.token_map import identity_map, map_tokenizers
from emulator.control.vocab import vocab_from_tokenizer
from emulator.data import load_task
from emulator.evaluate import accuracy
from tests.emulator.control.conftest import tiny_lm

PROMPTS = ["Definition: a small domestic cat.\nPart of speech:", "kitten: young of the cat.\nCategory:"]


def test_centred_shift_is_neutral_on_average_and_zero_where_unmapped():
    logits = torch.randn(3, 5)
    index = torch.tensor([4, -1, 0, 0, 2, -1])
    s = centred_shift(logits, index)
    assert s.shape == (3, 6) and torch.all(s[:, [1, 5]] == 0)
    assert torch.allclose(s[:, [0, 2, 3, 4]].mean(-1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(s[:, 2] - s[:, 0], logits[:, 0] - logits[:, 4])


def test_zero_control_leaves_any_target_unchanged(bpe_tok, sp_tok):
    small = tiny_lm(bpe_tok, 0)
    control = new_control_model(control_config(small.config, bpe_tok, 1, 16))
    target = tiny_lm(sp_tok, 1)
    test = load_task("wn-category", "test")[:12]
    tmap = map_tokenizers(sp_tok, bpe_tok)
    assert controlled_accuracy(target, sp_tok, control, bpe_tok, tmap, test) == accuracy(target, sp_tok, test)
    z = torch.randn(2, len(sp_tok))
    assert torch.allclose(
        ported_logprobs(z, torch.zeros(2, len(bpe_tok)), tmap.index), torch.log_softmax(z, -1)
    )


def test_control_stream_matches_a_full_recompute_and_reuses_its_cache(bpe_tok, sp_tok):
    control = tiny_lm(bpe_tok, 2)
    stream = ControlStream(control, bpe_tok, vocab_from_tokenizer(bpe_tok), PROMPTS[0])
    target_vocab = vocab_from_tokenizer(sp_tok)
    pieces = sp_tok(" adjective noun verb, cat's kittenish elan!", add_special_tokens=False)["input_ids"]
    full_cost = 0
    for tid in pieces:
        stream.extend_bytes(target_vocab.surface_bytes(tid))
        ids = bpe_tok(stream.text, add_special_tokens=False)["input_ids"]
        full_cost += len(ids)
        with torch.no_grad():
            ref = control(input_ids=torch.tensor([ids])).logits[0, -1]
        assert stream.fed == ids
        assert torch.allclose(stream.logits, ref, atol=1e-5)
    assert stream.text.endswith(" adjective noun verb, cat's kittenish elan!")
    assert stream.fed_tokens < full_cost / 4  # only the changed suffix is run again
    assert stream.base_chars > len(PROMPTS[0])  # boundaries were committed along the way


def _naive_ported_greedy(target, ttok, control, ctok, tmap, prompt: str, steps: int) -> list[int]:
    """No cache: every step re-runs both models on the whole text (target ids, control re-tokenised)."""
    tvocab = vocab_from_tokenizer(ttok)
    ids = ttok(prompt, add_special_tokens=False)["input_ids"]
    out: list[int] = []
    for _ in range(steps):
        text = (prompt.encode() + b"".join(tvocab.surface_bytes(t) for t in out)).decode("utf-8", "replace")
        # Same vocabulary: the control model reads the target's own ids; else the re-tokenised text.
        cids = ids + out if tmap.is_identity else ctok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            t_logits = target(input_ids=torch.tensor([ids + out])).logits[0, -1]
            c_logits = control(input_ids=torch.tensor([cids])).logits[0, -1]
        nxt = int(ported_logprobs(t_logits, c_logits, tmap.sized(t_logits.shape[-1]), 1.5).argmax())
        out.append(nxt)
        if nxt == ttok.eos_token_id:
            break
    return out


@pytest.mark.parametrize("same_vocab", [True, False])
def test_cached_control_decoding_equals_full_recompute(bpe_tok, sp_tok, same_vocab):
    ttok = bpe_tok if same_vocab else sp_tok
    target, control = tiny_lm(ttok, 3), tiny_lm(bpe_tok, 4)
    tmap = identity_map(len(bpe_tok)) if same_vocab else map_tokenizers(sp_tok, bpe_tok)
    got = generate_with_control(target, ttok, control, bpe_tok, tmap, PROMPTS, alpha=1.5, max_new_tokens=6)
    for prompt, ids in zip(PROMPTS, got, strict=True):
        assert ids == _naive_ported_greedy(target, ttok, control, bpe_tok, tmap, prompt, 6)


def test_sampling_is_seeded_and_top_p_tiny_is_greedy(bpe_tok):
    target, control = tiny_lm(bpe_tok, 5), tiny_lm(bpe_tok, 6)
    tmap = identity_map(len(bpe_tok))
    kw = dict(alpha=1.0, max_new_tokens=5)
    a = generate_with_control(target, bpe_tok, control, bpe_tok, tmap, PROMPTS, temperature=1.0, seed=7, **kw)
    b = generate_with_control(target, bpe_tok, control, bpe_tok, tmap, PROMPTS, temperature=1.0, seed=7, **kw)
    greedy = generate_with_control(target, bpe_tok, control, bpe_tok, tmap, PROMPTS, **kw)
    nucleus = generate_with_control(
        target, bpe_tok, control, bpe_tok, tmap, PROMPTS, temperature=1.0, top_p=1e-6, **kw
    )
    assert a == b and nucleus == greedy


def test_empty_prompt_is_refused(bpe_tok):
    with pytest.raises(ValueError, match="non-empty"):
        ControlStream(tiny_lm(bpe_tok, 0), bpe_tok, vocab_from_tokenizer(bpe_tok), "")
