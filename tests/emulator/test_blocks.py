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


def test_refused_architectures_are_named_with_a_reason():
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=32, d_model=16, d_ff=32, num_layers=2, num_heads=2))
    with pytest.raises(UnsupportedArchitectureError, match="'t5'.*encoder-decoder"):
        get_blocks(t5)

    class NoBlocks(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = t5.config.__class__(num_layers=2, is_encoder_decoder=False)
            self.config.model_type = "flat"
            self.proj = torch.nn.Linear(4, 4)

    with pytest.raises(UnsupportedArchitectureError, match="'flat'.*no decoder block list"):
        get_blocks(NoBlocks())


def test_blocks_found_in_a_family_outside_the_old_registry():
    from transformers import BloomConfig, BloomForCausalLM

    model = BloomForCausalLM(BloomConfig(vocab_size=32, hidden_size=16, n_layer=3, n_head=2))
    paths = paths_for(model)
    assert (paths.blocks, paths.final_norm, paths.head) == ("transformer.h", "transformer.ln_f", "lm_head")
    assert paths.embeddings[0] == "transformer.word_embeddings" and num_blocks(model) == 3
    assert set(paths.lora_targets) == {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}


def test_peft_wrapped_model_is_unwrapped():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model("llama", layers=3), LoraConfig(r=2, target_modules=["q_proj"]))
    assert num_blocks(model) == 3
    assert isinstance(get_blocks(model)[0], torch.nn.Module)
