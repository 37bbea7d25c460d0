"""Tiny models on the zoo's two tokenizers for control-model and porting tests."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from emulator.zoo.specs import model_path
from tests.conftest import single_thread


def tiny_lm(tok, seed: int, hidden: int = 32, layers: int = 2) -> LlamaForCausalLM:
    """A random tiny Llama on a tokenizer's vocabulary, in eval mode."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def bpe_tok():
    """The zoo's byte-level BPE tokenizer (base/small)."""
    return AutoTokenizer.from_pretrained(model_path("small"), local_files_only=True)


@pytest.fixture(scope="session")
def sp_tok():
    """The zoo's Metaspace tokenizer (other)."""
    return AutoTokenizer.from_pretrained(model_path("other"), local_files_only=True)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread per test (see tests.conftest.single_thread)."""
    yield from single_thread()
