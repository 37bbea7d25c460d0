"""GGUF checkpoints: a local .gguf file loads (dequantised once, then cached by hash) and bad files fail clearly."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from emulator.zoo import GGUFError, load_model, resolve_model
from emulator.zoo import gguf as gguf_mod

gguf = pytest.importorskip("gguf", reason="the gguf package (offsite[real]) is not installed")

CHAT = "{% for m in messages %}<|bos|>{{ m['role'] }}\n{{ m['content'] }}<|eos|>\n{% endfor %}"
CHAT += "{% if add_generation_prompt %}<|bos|>assistant\n{% endif %}"


def _permute(w: torch.Tensor, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order (its rotary pairs), the inverse of what transformers undoes on load."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape).numpy()


def write_llama_gguf(
    model, tokenizer, path: Path, arch: str = "llama", chat_template: str | None = None
) -> Path:
    """Write an HF Llama with a byte-level BPE tokenizer as an F32 GGUF file, as llama.cpp's converter would."""
    cfg = model.config
    w = gguf.GGUFWriter(path, arch)
    w.add_name("tiny-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    special = {t["content"] for t in spec["added_tokens"] if t["special"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([tok for tok, _ in vocab])
    w.add_token_types([3 if tok in special else 1 for tok, _ in vocab])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]])
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_pad_token_id(tokenizer.pad_token_id)
    w.add_add_bos_token(False)
    if chat_template:
        w.add_chat_template(chat_template)
    sd = {k: v.float() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"].numpy())
    w.add_tensor("output_norm.weight", sd["model.norm.weight"].numpy())
    w.add_tensor("output.weight", sd["lm_head.weight"].numpy())
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}  # fmt: skip
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(
            f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], cfg.num_attention_heads)
        )
        w.add_tensor(
            f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads)
        )
        for hf, gg in names.items():
            w.add_tensor(f"blk.{i}.{gg}.weight", sd[p + hf + ".weight"].numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def base():
    """zoo:base (a 12-block Llama with a byte-level BPE tokenizer) in fp32."""
    return load_model("zoo:base")


@pytest.fixture(scope="module")
def gguf_file(base, tmp_path_factory) -> Path:
    """zoo:base written as an F32 GGUF file, with a chat template."""
    model, tok = base
    return write_llama_gguf(model, tok, tmp_path_factory.mktemp("gguf") / "tiny.gguf", chat_template=CHAT)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OFFSITE_CACHE_DIR", str(tmp_path / "cache"))


def test_gguf_loads_like_the_original_and_is_cached(base, gguf_file, tmp_path):
    model, tok = base
    start = time.perf_counter()
    loaded, ltok = load_model(str(gguf_file))
    cold = time.perf_counter() - start
    ids = torch.tensor([tok("a small dog barks at the cat", add_special_tokens=False)["input_ids"]])
    assert ltok("a small dog barks at the cat", add_special_tokens=False)["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    cached = resolve_model(str(gguf_file))
    assert cached.parent == tmp_path / "cache" / "gguf"
    assert cached.name == gguf_mod.file_sha256(gguf_file)
    assert "quantization_config" not in json.loads((cached / "config.json").read_text())
    assert ltok.chat_template and "assistant" in ltok.chat_template
    start = time.perf_counter()
    again, _ = load_model(str(gguf_file))
    warm = time.perf_counter() - start
    assert warm < cold
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, model(input_ids=ids).logits)


def test_corrupt_gguf_is_a_clear_error(gguf_file, tmp_path):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf file at all" * 100)
    with pytest.raises(GGUFError, match="is not a GGUF file"):
        resolve_model(str(garbage))
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(gguf_file.read_bytes()[: gguf_file.stat().st_size // 2])
    with pytest.raises(GGUFError, match="corrupt or truncated|truncated GGUF"):
        resolve_model(str(truncated))


def test_unsupported_architecture_is_a_clear_error(base, tmp_path):
    model, tok = base
    path = write_llama_gguf(model, tok, tmp_path / "bert.gguf", arch="bert")
    with pytest.raises(GGUFError, match="architecture 'bert' is not supported"):
        resolve_model(str(path))


def test_missing_gguf_package_is_a_clear_error(gguf_file, monkeypatch):
    real = gguf_mod.importlib.util.find_spec
    monkeypatch.setattr(
        gguf_mod.importlib.util, "find_spec", lambda n, *a: None if n == "gguf" else real(n, *a)
    )
    with pytest.raises(GGUFError, match=r"pip install 'offsite\[real\]'"):
        resolve_model(str(gguf_file))


def test_missing_gguf_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "nope.gguf"))


def test_chat_template_wraps_prompts_only_where_the_tokenizer_has_one(base, gguf_file):
    from emulator.data import Example
    from emulator.evaluate import prompt_text, uses_chat_template
    from emulator.train import encode

    _, plain = base
    _, chat = load_model(str(gguf_file))
    ex = [Example("dog: a pet.\nCategory:", (" animal", " plant"), 0)]
    assert not uses_chat_template(plain, "auto") and prompt_text(plain, ex[0].prompt, "auto") == ex[0].prompt
    assert encode(plain, ex) == encode(plain, ex, chat_template="auto")  # zoo:base: unchanged
    with pytest.raises(ValueError, match="has no chat template"):
        prompt_text(plain, "x", "on")
    assert not uses_chat_template(chat) and uses_chat_template(chat, "auto")  # off unless asked
    wrapped = prompt_text(chat, ex[0].prompt, "auto")
    assert wrapped == "<|bos|>user\ndog: a pet.\nCategory:<|eos|>\n<|bos|>assistant\n"
    ids, labels = encode(chat, ex, chat_template="on")[0]
    response = [t for t in labels if t != -100]
    assert chat.decode(response) == "animal<|eos|>"  # no leading space after the assistant header
    assert encode(chat, ex) == encode(plain, ex)
