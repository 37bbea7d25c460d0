import pytest
import torch

from emulator.derive import EmulatorOptions, derive_emulator
from emulator.distill import LOSSES, OPENERS, _heldout_nmse, _targets, distill, nmse, read_texts, sample_texts
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


def _everything_but_the_middle(emu) -> dict[str, torch.Tensor]:
    middle = {id(p) for m in emu.middle_modules().values() for p in m.parameters()}
    return {n: p.detach().clone() for n, p in emu.model.named_parameters() if id(p) not in middle}


def test_every_loss_leaves_adapter_embeddings_and_tied_head_bit_identical_and_keeps_the_best_middle():
    full = tiny_model("llama", layers=8)
    g = torch.Generator().manual_seed(1)
    ids, held = torch.randint(3, 96, (48, 16), generator=g), torch.randint(3, 96, (16, 16), generator=g)
    for loss in LOSSES:
        emu = derive_emulator(full, EmulatorOptions("uniform", 2, 2, keep=2))
        frozen = _everything_but_the_middle(emu)
        assert any("embed" in n for n in frozen)
        stats = distill(emu, full, ids, torch.ones_like(ids), steps=None, lr=3e-3, batch_size=8, loss=loss,
                        heldout=(held, torch.ones_like(held)), eval_every=2)  # fmt: skip
        assert stats["steps"] == 6  # one pass over 48 rows in batches of 8
        after = _everything_but_the_middle(emu)
        assert all(torch.equal(frozen[n], after[n]) for n in frozen), loss
        seen = [x for _, x in stats["heldout_nmse"]]
        assert stats["best_heldout_nmse"] <= min(seen) + 1e-12 and stats["heldout_perplexity"] > 1
        if stats["best_step"]:
            # The middle kept is the best one seen: re-measuring it gives that held-out NMSE.
            assert abs(_heldout_nmse(emu, full, _targets(emu, full, loss), held, torch.ones_like(held))
                       - stats["best_heldout_nmse"]) < 1e-5  # fmt: skip


def test_per_layer_targets_match_depths_and_unknown_loss_is_refused():
    full = tiny_model("llama", layers=8)
    emu = derive_emulator(full, EmulatorOptions("uniform", 2, 2, keep=2))
    assert _targets(emu, full, "lm+nmse") == [(4, 6)]
    assert _targets(emu, full, "layers") == [(3, 4), (4, 6)]  # 2 of 4 middle blocks: halfway, then the top
    with pytest.raises(ValueError, match="unknown distillation loss"):
        distill(emu, full, torch.ones(2, 4, dtype=torch.long), torch.ones(2, 4), loss="kl")


def test_self_sampled_text_is_seeded_and_starts_from_generic_openers(zoo_tokenizer):
    full = tiny_model("llama", layers=2, vocab=len(zoo_tokenizer))
    a = sample_texts(full, zoo_tokenizer, n=5, max_new_tokens=6, seed=3, batch=4)
    b = sample_texts(full, zoo_tokenizer, n=5, max_new_tokens=6, seed=3, batch=4)
    assert a == b and len(a) == 5
    assert all(t.startswith(o) for t, o in zip(a, OPENERS, strict=False))


def test_a_bad_text_file_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_texts(tmp_path / "none.txt")
    (tmp_path / "one.txt").write_text("only one line\n")
    with pytest.raises(ValueError, match="at least 2"):
        read_texts(tmp_path / "one.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_texts(tmp_path / "bin.txt")
