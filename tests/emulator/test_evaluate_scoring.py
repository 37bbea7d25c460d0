"""Multiple-choice scoring: shared-prompt scores equal plain per-row scores; acc_norm normalises by bytes."""

import random

import pytest
import torch

from emulator.data import Example
from emulator.evaluate import (
    accuracy,
    best_choice,
    choice_scores,
    encode_choices,
    mc_hits,
    norm_length,
    resolve_metric,
)
from emulator.zoo import load_model
from tests.conftest import tiny_model


@torch.no_grad()
def _plain_scores(model, prompts, conts) -> list[list[float]]:
    """Each (prompt + choice) alone, whole-vocabulary log_softmax: the reference the fast path must match."""
    out = []
    for p, cs in zip(prompts, conts, strict=True):
        row = []
        for c in cs:
            lp = torch.log_softmax(model(input_ids=torch.tensor([p + c])).logits[0].float(), -1)
            row.append(float(sum(lp[len(p) - 1 + k, t] for k, t in enumerate(c))))
        out.append(row)
    return out


def _ragged(seed: int = 0, n: int = 10):
    rng = random.Random(seed)
    prompts = [[rng.randrange(5, 900) for _ in range(rng.randrange(1, 25))] for _ in range(n)]
    conts = [[[rng.randrange(5, 900) for _ in range(rng.randrange(1, 5))] for _ in range(rng.randrange(2, 5))]
             for _ in range(n)]  # fmt: skip
    return prompts, conts


def _largest_gap(got: list[list[float]], want: list[list[float]]) -> float:
    return max(abs(a - b) for ra, rb in zip(got, want, strict=True) for a, b in zip(ra, rb, strict=True))


@pytest.fixture(scope="module")
def base():
    return load_model("zoo:base")


def test_scores_on_zoo_base_do_not_change_with_shared_prompts_and_small_batches(base):
    model, tok = base
    prompts, conts = _ragged()
    want = _plain_scores(model, prompts, conts)
    # A tiny budget forces many groups, each with left-padded prompts of different lengths.
    for budget in (64, 100_000):
        got = choice_scores(model, tok, prompts, conts, token_budget=budget)
        assert [len(r) for r in got] == [len(r) for r in want]
        assert _largest_gap(got, want) < 1e-3


@pytest.mark.parametrize("arch", ["gpt2", "opt", "gpt_neox", "qwen2"])
def test_shared_prompt_scores_match_plain_scores_on_other_families(zoo_tokenizer, arch):
    model = tiny_model(arch, layers=2, vocab=len(zoo_tokenizer))
    prompts, conts = _ragged(seed=1, n=6)
    got = choice_scores(
        model, zoo_tokenizer, prompts, conts, token_budget=80, logit_budget=10 * len(zoo_tokenizer)
    )
    want = _plain_scores(model, prompts, conts)
    assert _largest_gap(got, want) < 1e-4


def test_acc_norm_divides_by_the_choice_bytes_and_can_pick_another_choice():
    choices = (" a", " abcdefgh")
    assert norm_length(" abcdefgh") == 8 and norm_length(" é") == 2  # bytes, not characters
    assert best_choice([-3.0, -8.0], choices, "acc") == 0  # the higher summed log-likelihood
    assert best_choice([-3.0, -8.0], choices, "acc_norm") == 1  # -3/1 < -8/8
    with pytest.raises(ValueError, match="not a multiple-choice metric"):
        best_choice([-1.0, -2.0], choices, "exact_match")


def test_acc_and_acc_norm_come_from_one_scoring_pass_and_follow_the_scores(base):
    model, tok = base
    examples = [
        Example("The cat sat on the", (" mat", " extraordinarily long carpet runner"), 1),
        Example("Two plus two is", (" four", " a number that people write as four"), 1),
    ]
    scores = choice_scores(model, tok, *encode_choices(tok, examples))
    hits = mc_hits(model, tok, examples, ("acc", "acc_norm"))
    for metric in ("acc", "acc_norm"):
        want = sum(
            best_choice(s, e.choices, metric) == e.answer for s, e in zip(scores, examples, strict=True)
        )
        assert hits[metric] == want
    tagged = [Example(e.prompt, e.choices, e.answer, metric="acc_norm") for e in examples]
    assert accuracy(model, tok, tagged) == 100.0 * hits["acc_norm"] / 2  # the examples' own metric


def test_metric_must_fit_the_examples():
    mc = [Example("p", (" a", " b"), 0)]
    gen = [Example("p", target=" x")]
    assert resolve_metric(mc) == "acc" and resolve_metric(gen) == "exact_match"
    with pytest.raises(ValueError, match="does not fit"):
        resolve_metric(gen, "acc_norm")
    with pytest.raises(ValueError, match="unknown metric"):
        resolve_metric(mc, "f1")
