import pytest
import torch

from emulator.blocks import UnsupportedArchitectureError, get_blocks, num_blocks, paths_for
from tests.conftest import ARCHS, tiny_model


@pytest.mark.parametrize("arch", ARCHS)
def test_registry_finds_blocks_norm_and_head(arch):
    model = tiny_model(arch, layers=5)
    assert num_blocks(model) == 5
    paths = paths_for(model)
    names = dict(model.named_modules())
    assert paths.final_norm in names and paths.head in names
    for target in paths.lora_targets:
        assert any(n.endswith(target) for n in dict(get_blocks(model)[0].named_modules())), target


def test_unsupported_architecture_is_named():
    from transformers import BloomConfig, BloomForCausalLM

    model = BloomForCausalLM(BloomConfig(vocab_size=32, hidden_size=16, n_layer=2, n_head=2))
    with pytest.raises(UnsupportedArchitectureError, match="bloom"):
        get_blocks(model)


def test_peft_wrapped_model_is_unwrapped():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model("llama", layers=3), LoraConfig(r=2, target_modules=["q_proj"]))
    assert num_blocks(model) == 3
    assert isinstance(get_blocks(model)[0], torch.nn.Module)
