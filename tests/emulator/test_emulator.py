import json

import pytest
import torch

from emulator.blocks import get_blocks
from emulator.derive import EmulatorOptions, derive_emulator
from emulator.emulator import load_emulator
from emulator.plugin import plug_in
from tests.conftest import ARCHS, tiny_model


def _derive(model, batch, method="crash", **kw):
    opts = EmulatorOptions(method=method, first=2, last=2, keep=kw.pop("keep", 2), **kw)
    return derive_emulator(model, opts, calibration=batch)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["uniform", "crash"])
def test_plugging_unchanged_adapter_reproduces_full_logits_exactly(arch, method, token_batch):
    full = tiny_model(arch)
    ids, mask = token_batch
    with torch.no_grad():
        reference = full(input_ids=ids, attention_mask=mask).logits
        emu = _derive(full, token_batch, method)
        plugged = plug_in(full, emu.adapter_state_dict())
        assert torch.equal(plugged(input_ids=ids, attention_mask=mask).logits, reference)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tuned_adapter_lands_in_its_own_block_index(arch, token_batch):
    full = tiny_model(arch)
    emu = _derive(full, token_batch, "uniform")
    assert emu.manifest.layout == [0, 1, 2, 5, 6, 7]
    with torch.no_grad():
        for p in emu.adapter_modules()[6].parameters():  # full block 6 sits at emulator position 4
            p.add_(0.01)
    plugged = plug_in(full, emu.adapter_state_dict())
    for i, (a, b) in enumerate(zip(get_blocks(full), get_blocks(plugged), strict=True)):
        same = all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
        assert same == (i != 6), f"block {i}"


def test_crash_layout_keeps_depth_and_ties_weights(token_batch):
    full = tiny_model("llama", layers=10)
    emu = _derive(full, token_batch, "crash", keep=3)
    m = emu.manifest
    assert len(m.layout) == 10 and m.layout[:2] == [0, 1] and m.layout[-2:] == [8, 9]
    assert len(set(m.layout[2:8])) == 3 and sum(len(c) for c in m.clusters) == 6
    blocks = get_blocks(emu.model)
    for pos in range(2, 8):
        rep = m.layout.index(m.layout[pos])
        for a, b in zip(blocks[pos].parameters(), blocks[rep].parameters(), strict=True):
            assert a is b  # weight-tied, not a copy
    stored = sum(p.numel() for p in emu.model.parameters())  # parameters() de-duplicates tied tensors
    assert stored < sum(p.numel() for p in full.parameters())


def test_crash_with_spread_adapter_places_adapter_on_representatives(token_batch):
    full = tiny_model("llama", layers=10)
    emu = _derive(full, token_batch, "crash", keep=3, placement="spread")
    m = emu.manifest
    assert len(m.layout) == 10 and len(m.adapter_blocks) == 4
    assert set(m.adapter_blocks) <= set(m.layout)
    assert len(m.clusters) == 7


def test_shared_blocks_decode_with_cache_like_full_recompute(token_batch):
    full = tiny_model("llama", layers=8)
    emu = _derive(full, token_batch, "crash", keep=2)
    ids = token_batch[0][:2, :5]
    with torch.no_grad():
        cached = emu.model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, use_cache=True)
        recomputed = emu.model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, recomputed)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_save_load_round_trip_verifies_hash(arch, token_batch, tmp_path):
    full = tiny_model(arch)
    emu = _derive(full, token_batch, "crash")
    digest = emu.save(tmp_path / "emu")
    manifest = json.loads((tmp_path / "emu" / "manifest.json").read_text())
    assert manifest["emulator_hash"] == digest and manifest["layout"] == emu.manifest.layout
    loaded = load_emulator(tmp_path / "emu")
    ids, mask = token_batch
    with torch.no_grad():
        assert torch.allclose(
            loaded.model(input_ids=ids, attention_mask=mask).logits,
            emu.model(input_ids=ids, attention_mask=mask).logits,
            atol=1e-6,
        )
    # Stored once per block index, even where the layout repeats it.
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "emu" / "emulator.safetensors"))
    stored = {int(k.split(".")[1]) for k in keys if k.startswith("blocks.")}
    assert stored == set(emu.manifest.layout)


def test_tampered_emulator_is_refused(token_batch, tmp_path):
    emu = _derive(tiny_model("llama"), token_batch, "uniform")
    emu.save(tmp_path / "emu")
    weights = tmp_path / "emu" / "emulator.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match its manifest hash"):
        load_emulator(tmp_path / "emu")


def test_bad_options_and_adapters_get_clear_errors(token_batch):
    full = tiny_model("llama", layers=6)
    with pytest.raises(ValueError, match="keep must be between"):
        derive_emulator(full, EmulatorOptions("uniform", 2, 2, keep=5))
    with pytest.raises(ValueError, match="unknown emulator method"):
        derive_emulator(full, EmulatorOptions("random"))
    with pytest.raises(ValueError, match="calibration"):
        derive_emulator(full, EmulatorOptions("crash", 2, 2, keep=1))
    emu = derive_emulator(full, EmulatorOptions("uniform", 2, 2, keep=1))
    state = emu.adapter_state_dict()
    key = next(iter(state))
    with pytest.raises(ValueError, match="shape"):
        plug_in(full, {**state, key: torch.zeros(3)})
    with pytest.raises(KeyError, match="missing"):
        plug_in(full, {k: v for k, v in state.items() if k != key})
    with pytest.raises(IndexError, match="only 6 blocks"):
        plug_in(full, {k.replace("blocks.5.", "blocks.9."): v for k, v in state.items()})
