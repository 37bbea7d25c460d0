"""Proxy-tuning: cached lock-step decoding equals a full recompute; mixed peft batch; vocabulary checks."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from emulator.plugin import add_lora
from emulator.proxy import SmallPair, VocabularyMismatch, check_same_vocab, proxy_generate, proxy_scores
from emulator.zoo.specs import model_path

PROMPTS = ["Definition: a small domestic cat.\nPart of speech:", "cat:", "kitten: young of a cat.\nCategory:"]


def _lm(tok, seed: int, hidden: int, layers: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(model_path("small"), local_files_only=True)
    base, small = _lm(tok, 0, 48, 3), _lm(tok, 1, 32, 2)
    expert = add_lora(copy.deepcopy(small), [0, 1], 4)
    with torch.no_grad():  # a "tuned" expert: non-zero LoRA B
        for name, p in expert.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return tok, base, small, expert.eval()


def _naive(base, expert, anti, tok, prompt: str, alpha: float, steps: int) -> list[int]:
    """Full forward of all three models on the whole sequence at every step, no cache."""
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    out: list[int] = []
    for _ in range(steps):
        x = torch.tensor([ids + out])
        with torch.no_grad():
            s = proxy_scores(base(input_ids=x).logits[0, -1], expert(input_ids=x).logits[0, -1],
                             anti(input_ids=x).logits[0, -1], alpha)  # fmt: skip
        out.append(int(s.argmax()))
        if out[-1] == tok.eos_token_id:
            break
    return out


def test_cached_batched_proxy_decoding_equals_full_recompute(models):
    tok, base, small, expert = models
    got = proxy_generate(base, tok, PROMPTS, SmallPair(expert), alpha=1.5, max_new_tokens=6)
    for prompt, ids in zip(PROMPTS, got, strict=True):
        assert ids == _naive(base, expert, small, tok, prompt, 1.5, 6)


def test_mixed_peft_batch_equals_two_separate_models(models):
    tok, base, small, expert = models
    mixed = proxy_generate(base, tok, PROMPTS, SmallPair(expert), alpha=2.0, max_new_tokens=5)
    merged = copy.deepcopy(expert).merge_and_unload()
    separate = proxy_generate(base, tok, PROMPTS, SmallPair(merged, small), alpha=2.0, max_new_tokens=5)
    assert mixed == separate
    ids = tok(PROMPTS, add_special_tokens=False, return_tensors="pt", padding=True)
    e, a = SmallPair(expert).full(ids["input_ids"], ids["attention_mask"])
    e2, a2 = SmallPair(merged, small).full(ids["input_ids"], ids["attention_mask"])
    assert torch.allclose(e, e2, atol=1e-4) and torch.allclose(a, a2, atol=1e-5)
    split = SmallPair.split(expert)  # built from the peft expert: merged copy + LoRA-free base
    assert not split.mixed and not hasattr(split.anti, "peft_config")
    assert proxy_generate(base, tok, PROMPTS, split, alpha=2.0, max_new_tokens=5) == mixed
    with pytest.raises(ValueError, match="needs a peft model"):
        SmallPair.split(small)


def test_alpha_zero_is_the_base_alone_and_sampling_is_seeded(models):
    tok, base, _, expert = models
    pair = SmallPair(expert)
    assert proxy_generate(base, tok, PROMPTS, pair, alpha=0.0, max_new_tokens=5) == proxy_generate(
        base, tok, PROMPTS, None, max_new_tokens=5
    )
    kw = dict(alpha=1.0, max_new_tokens=5, temperature=0.8, top_p=0.9, seed=3)
    assert proxy_generate(base, tok, PROMPTS, pair, **kw) == proxy_generate(base, tok, PROMPTS, pair, **kw)


def test_vocabulary_mismatch_points_to_the_control_path(models):
    tok = models[0]
    other = AutoTokenizer.from_pretrained(model_path("other"), local_files_only=True)
    with pytest.raises(VocabularyMismatch, match="offsite port"):
        check_same_vocab(tok, other)
    check_same_vocab(tok, tok)


def test_anti_expert_needed_unless_peft(models):
    with pytest.raises(ValueError, match="peft"):
        SmallPair(models[2])
