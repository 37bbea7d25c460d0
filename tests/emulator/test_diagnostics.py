"""The gradient-cosine diagnostic: 1 for a stand-in identical to the model, lower once the middle is cut."""

import torch

from emulator.data import Example
from emulator.derive import EmulatorOptions, derive_emulator
from emulator.diagnostics import gradient_cosine
from tests.conftest import tiny_model


def _examples():
    return [Example(f"item {i} is", (" red", " blue"), i % 2) for i in range(16)]


def test_gradient_cosine_is_one_through_an_identical_stand_in_and_lower_through_a_cut_one(zoo_tokenizer):
    torch.manual_seed(0)
    full = tiny_model("llama", layers=8, vocab=len(zoo_tokenizer))
    same = derive_emulator(full, EmulatorOptions("full", 2, 2, 4))
    cut = derive_emulator(full, EmulatorOptions("uniform", 2, 2, 1))
    exs = _examples()
    assert abs(gradient_cosine(full, same, zoo_tokenizer, exs) - 1.0) < 1e-6
    assert gradient_cosine(full, cut, zoo_tokenizer, exs) < 0.999
    # Nothing is left trainable or changed by the probe.
    assert all(p.grad is None for p in full.parameters())
