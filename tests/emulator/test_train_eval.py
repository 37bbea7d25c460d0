import pytest
import torch

from emulator.data import Example
from emulator.evaluate import accuracy, mc_accuracy
from emulator.train import collate, encode, supervised_loss, tune
from tests.conftest import tiny_model


def _examples():
    return [
        Example(
            f"item {i} is {('fire', 'sky')[i % 2]}", (" red", " blue"), i % 2, None, ("red", "blue")[i % 2]
        )
        for i in range(32)
    ]


def test_encode_masks_prompt_and_supervises_response(zoo_tokenizer):
    ids, labels = encode(zoo_tokenizer, _examples()[:1])[0]
    n_prompt = len(zoo_tokenizer("item 0 is fire", add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == zoo_tokenizer.eos_token_id


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt", "gpt_neox"])
def test_supervised_loss_equals_the_models_own_loss_and_its_gradient(zoo_tokenizer, arch):
    torch.manual_seed(0)
    model = tiny_model(arch, layers=2, vocab=len(zoo_tokenizer))
    rows = encode(zoo_tokenizer, _examples()[:5])
    rows[1] = (rows[1][0] + [7, 8, 9], rows[1][1] + [-100, -100, -100])  # ragged: right padding in the batch
    batch = collate(rows, zoo_tokenizer.pad_token_id or 0)
    own = model(**batch, use_cache=False).loss
    own.backward()
    g_own = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ours = supervised_loss(model, batch)
    ours.backward()
    assert torch.allclose(ours, own, atol=1e-5)
    assert all(torch.allclose(a, p.grad, atol=1e-5) for a, p in zip(g_own, model.parameters(), strict=True))
    batch["labels"][:] = -100
    with pytest.raises(ValueError, match="no supervised tokens"):
        supervised_loss(model, batch)


def test_tuning_learns_a_label_and_accuracy_rises(zoo_tokenizer):
    torch.manual_seed(0)
    model = tiny_model("llama", layers=2, vocab=len(zoo_tokenizer))
    exs = _examples()
    before = mc_accuracy(model, zoo_tokenizer, exs)
    stats = tune(model, zoo_tokenizer, exs, list(model.parameters()), steps=80, lr=5e-3, batch_size=8)
    after = accuracy(model, zoo_tokenizer, exs)
    assert after == 100.0 and after > 100 * before - 1e-9
    assert stats.steps == 80 and stats.tokens > 0 and stats.peak_mem_mb > 0


def test_accuracy_with_progress_scores_in_chunks_and_gives_the_same_figure(zoo_tokenizer):
    model = tiny_model("llama", vocab=len(zoo_tokenizer))
    examples = [
        Example(prompt=f"word {i} is a", choices=[" noun", " verb", " adjective"], answer=i % 3)
        for i in range(10)
    ]
    seen = []
    chunked = accuracy(model, zoo_tokenizer, examples, progress=lambda d, t: seen.append((d, t)), chunk=4)
    assert chunked == accuracy(model, zoo_tokenizer, examples)
    assert seen == [(4, 10), (8, 10), (10, 10)]


def test_a_proximal_term_keeps_the_tuned_parameters_nearer_where_they_started(zoo_tokenizer):
    def drift(mu: float) -> float:
        torch.manual_seed(0)
        model = tiny_model("llama", layers=2, vocab=len(zoo_tokenizer))
        params = list(model.parameters())
        start = [p.detach().clone() for p in params]
        tune(model, zoo_tokenizer, _examples(), params, steps=15, lr=5e-3, batch_size=8, proximal=mu)
        return float(sum((p - s).pow(2).sum() for p, s in zip(params, start, strict=True)))

    assert drift(50.0) < drift(0.0)
