import pytest
import torch
from transformers import AutoModelForCausalLM

from emulator.derive import EmulatorOptions, derive_emulator
from emulator.plugin import add_lora, export_checkpoint, load_lora_state, lora_state, plug_in, plug_in_lora
from tests.conftest import tiny_model


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_lora_tuned_on_uniform_emulator_plugs_into_right_blocks(arch, token_batch):
    full = tiny_model(arch)
    emu = derive_emulator(full, EmulatorOptions("uniform", 2, 2, keep=2))  # layout [0,1,2,5,6,7]
    peft_emu = add_lora(emu.model, emu.manifest.adapter_positions, rank=4)
    with torch.no_grad():
        for name, p in peft_emu.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # as if tuned: B starts at zero, so LoRA is a no-op until trained
    state = lora_state(peft_emu, emu.manifest.layout)
    assert {int(k.split(".")[1]) for k in state} == {0, 1, 6, 7}
    plugged = plug_in_lora(full, state, rank=4)
    # The plugged full model carries exactly the emulator's LoRA weights, by block index and name.
    assert all(torch.equal(v, lora_state(plugged)[k]) for k, v in state.items())
    ids, mask = token_batch
    with torch.no_grad():
        assert not torch.allclose(
            plugged(input_ids=ids, attention_mask=mask).logits,
            full(input_ids=ids, attention_mask=mask).logits,
        )


def test_untrained_lora_plug_in_reproduces_full_logits(token_batch):
    full = tiny_model("llama")
    emu = derive_emulator(full, EmulatorOptions("crash", 2, 2, keep=2), calibration=token_batch)
    peft_emu = add_lora(emu.model, emu.manifest.adapter_positions, rank=2)
    plugged = plug_in_lora(full, lora_state(peft_emu, emu.manifest.layout), rank=2)
    ids, mask = token_batch
    with torch.no_grad():
        assert torch.equal(
            plugged(input_ids=ids, attention_mask=mask).logits,
            full(input_ids=ids, attention_mask=mask).logits,
        )


def test_lora_state_with_wrong_keys_is_refused():
    full = tiny_model("llama")
    peft_model = add_lora(full, [0, 7], rank=2)
    state = lora_state(peft_model)
    with pytest.raises(KeyError, match="do not match"):
        load_lora_state(peft_model, {k.replace("blocks.7.", "blocks.3."): v for k, v in state.items()})


def test_exported_checkpoints_load_from_local_path(token_batch, tmp_path):
    full = tiny_model("llama")
    emu = derive_emulator(full, EmulatorOptions("uniform", 2, 2, keep=2))
    with torch.no_grad():
        for p in emu.adapter_modules()[0].parameters():
            p.mul_(1.1)
    plugged = plug_in(full, emu.adapter_state_dict())
    export_checkpoint(plugged, tmp_path / "whole")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "whole", local_files_only=True).eval()
    ids, mask = token_batch
    with torch.no_grad():
        expected = plugged(input_ids=ids, attention_mask=mask).logits
        assert torch.allclose(reloaded(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-5)

    peft_emu = add_lora(
        derive_emulator(full, EmulatorOptions("uniform", 2, 2, keep=2)).model, [0, 1, 4, 5], rank=2
    )
    with torch.no_grad():
        for name, p in peft_emu.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    lora_plugged = plug_in_lora(full, lora_state(peft_emu, [0, 1, 2, 5, 6, 7]), rank=2)
    export_checkpoint(lora_plugged, tmp_path / "adapter", as_adapter=True)
    export_checkpoint(lora_plugged, tmp_path / "merged")
    from peft import PeftModel

    with torch.no_grad():
        expected = lora_plugged(input_ids=ids, attention_mask=mask).logits
        via_adapter = PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "adapter").eval()
        assert torch.allclose(via_adapter(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-5)
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", local_files_only=True).eval()
        assert torch.allclose(merged(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-4)
    with pytest.raises(ValueError, match="as_adapter"):
        export_checkpoint(plugged, tmp_path / "x", as_adapter=True)
