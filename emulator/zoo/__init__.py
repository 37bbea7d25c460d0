"""The embedded model zoo and tasks: small models built from WordNet text, shipped in the repo."""

from __future__ import annotations

from pathlib import Path

import torch

from emulator.zoo.locate import public_texts, zoo_model_dir
from emulator.zoo.specs import DEFAULT_MODEL, MODELS

__all__ = ["DEFAULT_MODEL", "MODELS", "resolve_model", "load_model", "public_texts"]


def resolve_model(spec: str) -> Path:
    """A model reference as a directory: 'zoo:NAME' (or a bare zoo name) or a local checkpoint path."""
    name = spec[4:] if spec.startswith("zoo:") else spec
    if name in MODELS:
        return zoo_model_dir(name)
    path = Path(spec).expanduser()
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"{spec!r} is neither a zoo model ({', '.join(MODELS)}) nor a local Hugging Face checkpoint "
            "directory with a config.json (models are never downloaded)"
        )
    return path


def load_model(spec: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32):
    """Load (model, tokenizer) from the zoo or a local checkpoint, offline; the model in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars speak for long steps
    path = resolve_model(spec)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer
