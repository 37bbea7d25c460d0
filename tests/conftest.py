"""Shared fixtures: tiny random models of each supported architecture, built offline."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
# This machine's coordinator key (protocols.signing.offsite_home) lives here, not in the user's ~/.offsite.
os.environ["OFFSITE_HOME"] = tempfile.mkdtemp(prefix="offsite-home-")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

VOCAB = 96


def tiny_model(arch: str, layers: int = 8, vocab: int = VOCAB, seed: int = 0) -> torch.nn.Module:
    """A small randomly initialised causal LM of the given architecture, in eval mode."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        OPTConfig,
        OPTForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "llama":
        m = LlamaForCausalLM(
            LlamaConfig(
                hidden_size=32,
                num_hidden_layers=layers,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=64,
                **common,
            )
        )
    elif arch == "mistral":
        m = MistralForCausalLM(
            MistralConfig(
                hidden_size=32,
                num_hidden_layers=layers,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=64,
                **common,
            )
        )
    elif arch == "qwen2":
        m = Qwen2ForCausalLM(
            Qwen2Config(
                hidden_size=32,
                num_hidden_layers=layers,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=64,
                **common,
            )
        )
    elif arch == "gpt2":
        m = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=layers, n_head=4, n_positions=128, **common))
    elif arch == "opt":
        m = OPTForCausalLM(
            OPTConfig(
                hidden_size=32,
                num_hidden_layers=layers,
                num_attention_heads=4,
                ffn_dim=64,
                word_embed_proj_dim=32,
                max_position_embeddings=128,
                **common,
            )
        )
    elif arch == "gpt_neox":
        m = GPTNeoXForCausalLM(
            GPTNeoXConfig(
                hidden_size=32,
                num_hidden_layers=layers,
                num_attention_heads=4,
                intermediate_size=64,
                max_position_embeddings=128,
                **common,
            )
        )
    else:
        raise ValueError(arch)
    return m.eval()


ARCHS = ["llama", "mistral", "qwen2", "gpt2", "opt", "gpt_neox"]


@pytest.fixture
def token_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed (6, 12) batch of ids with a right-padded row, and its attention mask."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (6, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[5, 8:] = 0
    ids[5, 8:] = 0
    return ids, mask


@pytest.fixture(scope="session")
def zoo_tokenizer():
    """The shipped base tokenizer (byte-level BPE)."""
    from transformers import AutoTokenizer

    from emulator.zoo.specs import model_path

    return AutoTokenizer.from_pretrained(model_path("base"), local_files_only=True)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random 6-block Llama (hidden 32) saved with the zoo's base tokenizer, as a local checkpoint."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from emulator.zoo.specs import model_path

    out = tmp_path_factory.mktemp("tiny-model")
    tok = AutoTokenizer.from_pretrained(model_path("base"), local_files_only=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=6,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def small_run(tiny_checkpoint, tmp_path) -> dict:
    """Run-config overrides for a fast run on the tiny model (2 rounds, 2 local steps)."""
    return {
        "model": str(tiny_checkpoint),
        "emulator": "uniform",
        "adapter-first": 1,
        "adapter-last": 1,
        "keep": 2,
        "rounds": 2,
        "clients-per-round": 2,
        "local-steps": 2,
        "batch-size": 8,
        "max-examples": 48,
        "eval-size": 24,
        "out-dir": str(tmp_path / "runs"),
        "run-name": "r",
        "node-timeout": 5.0,
        "round-timeout": 60.0,
        "query-timeout": 10.0,
    }


def single_thread():
    """Generator for autouse fixtures: one torch thread for the test, then the previous count.

    Tiny models on a shared 2-core machine run several times faster with one thread than with two.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
