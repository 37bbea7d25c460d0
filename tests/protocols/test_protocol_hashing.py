"""Canonical hashes: stable for equal content, different after any change."""

from __future__ import annotations

import torch

from protocols.hashing import hash_directory, hash_state_dict


def state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"b.weight": torch.randn(3, 4, generator=g), "a.bias": torch.randn(4, generator=g)}


def test_state_hash_stable_across_order_and_copies():
    s = state()
    reordered = {k: s[k].clone() for k in reversed(list(s))}
    assert hash_state_dict(s) == hash_state_dict(reordered)
    assert len(hash_state_dict(s)) == 64


def test_state_hash_changes_with_any_element_dtype_shape_or_name():
    base = hash_state_dict(state())
    for i in range(12):
        s = state()
        s["b.weight"].view(-1)[i] += 1e-6
        assert hash_state_dict(s) != base, i
    s = state()
    s["b.weight"] = s["b.weight"].reshape(4, 3)
    assert hash_state_dict(s) != base
    s = state()
    s["b.weight"] = s["b.weight"].double()
    assert hash_state_dict(s) != base
    s = state()
    s["c.weight"] = s.pop("b.weight")
    assert hash_state_dict(s) != base
    # Same raw bytes, different dtype: the dtype itself must be hashed.
    assert hash_state_dict({"x": torch.zeros(4)}) != hash_state_dict({"x": torch.zeros(4, dtype=torch.int32)})


def test_state_hash_handles_bf16_and_non_contiguous():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert hash_state_dict({"x": t.t()}) == hash_state_dict({"x": t.t().contiguous()})
    a = hash_state_dict({"x": t.to(torch.bfloat16)})
    t2 = t.clone()
    t2[2, 3] = 12.5
    assert a != hash_state_dict({"x": t2.to(torch.bfloat16)})


def test_directory_hash(tmp_path):
    def make(root):
        (root / "sub").mkdir(parents=True)
        (root / "a.bin").write_bytes(b"\x00\x01\x02")
        (root / "sub" / "b.txt").write_text("hello")
        (root / "manifest.json").write_text('{"hash": "x"}')

    make(tmp_path / "one")
    make(tmp_path / "two")
    base = hash_directory(tmp_path / "one")
    assert base == hash_directory(tmp_path / "two")

    (tmp_path / "two" / "sub" / "b.txt").write_text("hellp")
    assert hash_directory(tmp_path / "two") != base

    (tmp_path / "two" / "sub" / "b.txt").write_text("hello")
    (tmp_path / "two" / "sub" / "b.txt").rename(tmp_path / "two" / "sub" / "c.txt")
    assert hash_directory(tmp_path / "two") != base

    # The excluded manifest may change without changing the hash.
    h = hash_directory(tmp_path / "one", exclude={"manifest.json"})
    (tmp_path / "one" / "manifest.json").write_text('{"hash": "y"}')
    assert hash_directory(tmp_path / "one", exclude={"manifest.json"}) == h
    assert hash_directory(tmp_path / "one") != base
