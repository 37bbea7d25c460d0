"""The embedded zoo's fixed recipe: tokenizer and model shapes, pretraining budgets, paths."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent
MODELS_DIR = ZOO_DIR / "models"
TASKS_DIR = ZOO_DIR / "tasks"


@dataclass(frozen=True)
class TokenizerSpec:
    """A tokenizer to train on the corpus: 'bytelevel' (Ġ marker) or 'metaspace' (▁ marker)."""

    name: str
    kind: str
    vocab_size: int
    specials: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    """A Llama-architecture model of the zoo and its pretraining budget."""

    name: str
    tokenizer: str
    hidden: int
    layers: int
    heads: int
    intermediate: int
    steps: int
    batch: int = 12
    seq_len: int = 96
    lr: float = 2e-3
    warmup: int = 100


TOKENIZERS = {
    "wn-bpe": TokenizerSpec(
        "wn-bpe",
        "bytelevel",
        4096,
        {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>", "unk_token": "<|unk|>"},
    ),
    "wn-sp": TokenizerSpec(
        "wn-sp",
        "metaspace",
        3072,
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"},
    ),
}

MODELS = {
    # The coordinator's full model: deep enough (12 blocks) for emulators to matter.
    "base": ModelSpec("base", "wn-bpe", hidden=192, layers=12, heads=6, intermediate=512, steps=2400),
    # Same tokenizer, smaller: the proxy-tuning expert / control model.
    "small": ModelSpec("small", "wn-bpe", hidden=128, layers=4, heads=4, intermediate=352, steps=3000),
    # A different vocabulary (▁ marker, other specials): the cross-vocabulary porting target.
    "other": ModelSpec("other", "wn-sp", hidden=128, layers=4, heads=4, intermediate=352, steps=3000),
}

DEFAULT_MODEL = "base"


def model_path(name: str = DEFAULT_MODEL) -> Path:
    """Directory of an embedded zoo model (an ordinary Hugging Face checkpoint)."""
    if name not in MODELS:
        raise KeyError(f"unknown zoo model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS_DIR / name
