"""Local training of a control model against the cached template stand-in; returns its delta."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from client.trainer import LocalUpdate
from emulator.control.model import CONTROL_METHOD, control_from_state
from emulator.control.port import controlled_accuracy
from emulator.control.token_map import identity_map
from emulator.control.train import control_response_loss, train_control
from emulator.data import Example
from emulator.emulator import Emulator


def is_control(emu: Emulator) -> bool:
    """Whether the stand-in is a control template (its manifest says so)."""
    return emu.manifest.method == CONTROL_METHOD


def _examples_digest(examples: list[Example]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(repr((ex.prompt, ex.response)).encode())
    return h.hexdigest()


def train_control_update(
    emu: Emulator,
    adapter: dict[str, torch.Tensor],
    examples: list[Example],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    lora_rank: int = 0,
    train_lora_a: bool = False,
    cache_root: Path | None = None,
) -> LocalUpdate:
    """Tune the global control model on local data; template log-probs cached per stand-in and dataset.

    Takes the same arguments as client.trainer.train_adapter; the control model is always trained
    whole, so lora_rank must be 0.
    """
    if lora_rank:
        raise ValueError("a control model is trained whole: lora-rank must be 0 with a control stand-in")
    options = emu.manifest.options
    control = control_from_state(options["control_config"], adapter)
    cache_path = None
    if cache_root is not None:
        name = f"{emu.manifest.emulator_hash[:16]}-{_examples_digest(examples)[:16]}.pt"
        cache_path = Path(cache_root) / "template-logprobs" / name
    stats = train_control(
        control,
        emu.model,
        emu.tokenizer,
        examples,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        cache_path=cache_path,
        template_dropout=float(options.get("template_dropout", 0.0)),
    )
    delta = {k: v.detach().float() - adapter[k].float() for k, v in control.state_dict().items()}
    return LocalUpdate(delta, stats)


def evaluate_control_update(
    emu: Emulator, adapter: dict[str, torch.Tensor], examples: list[Example]
) -> tuple[float, float]:
    """(accuracy %, combined response loss) of template + control on local examples."""
    control = control_from_state(emu.manifest.options["control_config"], adapter)
    tok = emu.tokenizer
    acc = controlled_accuracy(emu.model, tok, control, tok, identity_map(len(tok)), examples)
    return acc, control_response_loss(control, emu.model, tok, examples)
