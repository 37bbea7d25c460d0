"""Control-model training: zero initial shift, cached template log-probs, only the control model learns."""

from __future__ import annotations

import pytest
import torch

from emulator.control.model import combined_logprobs, control_config, new_control_model
from emulator.control.train import control_loss, control_response_loss, template_cache, train_control
from emulator.data import load_task
from emulator.train import collate, encode
from tests.emulator.control.conftest import tiny_lm


def test_new_control_model_starts_with_zero_shift_and_template_embeddings(bpe_tok):
    template = tiny_lm(bpe_tok, 0, hidden=32)
    control = new_control_model(control_config(template.config, bpe_tok, 1, 16), template=template)
    ids = torch.tensor([[5, 6, 7]])
    assert torch.count_nonzero(control(input_ids=ids).logits) == 0
    z = torch.randn(2, len(bpe_tok))
    assert torch.allclose(combined_logprobs(z, torch.zeros_like(z)), torch.log_softmax(z, -1), atol=1e-6)
    emb = control.get_input_embeddings().weight
    assert emb.shape == (len(bpe_tok), 16) and emb.std() > 0


def test_cached_template_logprobs_give_the_same_loss(bpe_tok, tmp_path):
    template, control = tiny_lm(bpe_tok, 0), tiny_lm(bpe_tok, 1, hidden=16, layers=1)
    rows = encode(bpe_tok, load_task("wn-category", "train")[:6])
    cached = template_cache(template, rows, bpe_tok.pad_token_id, tmp_path / "c.pt")
    again = template_cache(
        None, rows, bpe_tok.pad_token_id, tmp_path / "c.pt"
    )  # read back, no template needed
    assert all(torch.equal(a, b) for a, b in zip(cached, again, strict=True))
    batch = collate(rows, bpe_tok.pad_token_id)
    with torch.no_grad():
        live = control_loss(control, template, batch)
        from_cache = control_loss(control, None, batch, torch.cat(cached))
    assert torch.allclose(live, from_cache, atol=1e-6)


def test_training_lowers_the_combined_loss_and_leaves_the_template_alone(bpe_tok):
    template = tiny_lm(bpe_tok, 0)
    control = new_control_model(control_config(template.config, bpe_tok, 1, 16), template=template)
    examples = load_task("wn-category", "train")[:32]
    before_t = {k: v.clone() for k, v in template.state_dict().items()}
    before = control_response_loss(control, template, bpe_tok, examples)
    stats = train_control(
        control, template, bpe_tok, examples, steps=25, lr=1e-2, batch_size=8, template_dropout=0.5
    )
    after = control_response_loss(control, template, bpe_tok, examples)
    assert after < before - 0.5 and stats.steps == 25
    assert all(torch.equal(v, template.state_dict()[k]) for k, v in before_t.items())


def test_bad_inputs_are_refused(bpe_tok, sp_tok):
    template = tiny_lm(bpe_tok, 0)
    wrong = tiny_lm(sp_tok, 1)
    examples = load_task("wn-category", "train")[:4]
    with pytest.raises(ValueError, match="vocabulary"):
        train_control(wrong, template, bpe_tok, examples, steps=1)
    with pytest.raises(ValueError, match="template_dropout"):
        train_control(tiny_lm(bpe_tok, 2), template, bpe_tok, examples, steps=1, template_dropout=1.0)
    with pytest.raises(ValueError, match="no training examples"):
        train_control(tiny_lm(bpe_tok, 2), template, bpe_tok, [], steps=1)
