import torch

from emulator.derive import EmulatorOptions, derive_emulator
from emulator.distill import distill, nmse
from tests.conftest import tiny_model


def test_nmse_is_zero_for_identical_and_ignores_padding():
    t = torch.randn(2, 5, 8)
    mask = torch.ones(2, 5)
    assert float(nmse(t, t, mask)) == 0.0
    s = t.clone()
    s[1, 4] += 100.0
    mask[1, 4] = 0
    assert float(nmse(t, s, mask)) == 0.0


def test_distillation_lowers_nmse_and_trains_only_the_middle():
    full = tiny_model("llama", layers=8)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 96, (64, 16), generator=g)
    mask = torch.ones_like(ids)
    emu = derive_emulator(full, EmulatorOptions("uniform", 2, 2, keep=1))
    adapter_before = emu.adapter_state_dict()
    middle_before = {b: [p.clone() for p in m.parameters()] for b, m in emu.middle_modules().items()}
    stats = distill(emu, full, ids, mask, steps=60, lr=3e-3, batch_size=16)
    assert stats["nmse_end"] < 0.8 * stats["nmse_start"]
    assert all(torch.equal(v, emu.adapter_state_dict()[k]) for k, v in adapter_before.items())
    changed = [
        not torch.equal(a, b)
        for bidx, m in emu.middle_modules().items()
        for a, b in zip(middle_before[bidx], m.parameters(), strict=True)
    ]
    assert any(changed)
    assert emu.manifest.distillation["steps"] == 60
