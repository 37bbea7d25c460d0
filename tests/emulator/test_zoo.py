import json
from pathlib import Path

import pytest
import torch

from emulator.zoo import load_model, public_texts, resolve_model
from emulator.zoo.specs import MODELS


def test_shipped_zoo_loads_offline_with_expected_shapes():
    base, tok = load_model("zoo:base")
    small, small_tok = load_model("small")
    other, other_tok = load_model("other")
    assert base.config.num_hidden_layers >= 12 and base.config.model_type == "llama"
    assert small.config.num_hidden_layers < base.config.num_hidden_layers
    assert small_tok.get_vocab() == tok.get_vocab()  # proxy-tuning needs one vocabulary
    assert other_tok.get_vocab() != tok.get_vocab()
    assert any(t.startswith("Ġ") for t in tok.get_vocab()) and any(
        t.startswith("▁") for t in other_tok.get_vocab()
    )
    sizes = sum(f.stat().st_size for name in MODELS for f in resolve_model(name).iterdir())
    assert sizes < 48 * 2**20  # shipped in the repo: keep it small


def test_zoo_base_model_learned_english():
    model, tok = load_model("base")
    stats = json.loads((resolve_model("base") / "zoo_stats.json").read_text())
    ids = tok(public_texts(40), return_tensors="pt", padding=True, add_special_tokens=False)
    labels = ids["input_ids"].masked_fill(ids["attention_mask"] == 0, -100)
    with torch.no_grad():
        loss = model(**ids, labels=labels).loss.item()
    assert loss < 6.0  # random init over a 4096 vocabulary starts at ln(4096) ≈ 8.3
    assert abs(loss - stats["val_loss"]) < 1.0


def test_local_checkpoint_path_and_bad_reference(tmp_path):
    model, tok = load_model("base")
    model.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    again, _ = load_model(str(tmp_path / "ckpt"))
    assert again.config.num_hidden_layers == model.config.num_hidden_layers
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        resolve_model("meta-llama/Llama-2-7b")


@pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").exists(), reason="needs Debian's wordnet-base")
def test_zoo_build_is_deterministic(tmp_path):
    from emulator.zoo.build import build_zoo

    a = build_zoo(tmp_path / "a", only=["small"], steps_scale=0.002)
    b = build_zoo(tmp_path / "b", only=["small"], steps_scale=0.002)
    assert a["small"]["val_loss"] == b["small"]["val_loss"]
    fa = (tmp_path / "a" / "small" / "model.safetensors").read_bytes()
    fb = (tmp_path / "b" / "small" / "model.safetensors").read_bytes()
    assert fa == fb
    tok = json.loads((tmp_path / "a" / "small" / "tokenizer.json").read_text())
    assert len(tok["model"]["vocab"]) == 4096
