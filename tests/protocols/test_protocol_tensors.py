"""State dicts and directories through Flower ArrayRecords."""

from __future__ import annotations

import pytest
import torch
from flwr.app import Array, ArrayRecord

from protocols.hashing import hash_directory
from protocols.schema import ProtocolError
from protocols.tensors import (
    array_record_nbytes,
    array_record_to_directory,
    array_record_to_state_dict,
    directory_to_array_record,
    state_dict_nbytes,
    state_dict_to_array_record,
)


def sample_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "blocks.0.attn.q_proj.weight": torch.randn(8, 4, generator=g),
        "blocks.0.ln.bias": torch.randn(4, generator=g).to(torch.bfloat16),
        "blocks.11.scale": torch.tensor(0.5),
        "position_ids": torch.arange(6).reshape(1, 6),
        "mask": torch.tensor([True, False, True]),
    }


def test_round_trip_names_shapes_and_fp16_tolerance():
    state = sample_state()
    record = state_dict_to_array_record(state)
    assert set(record) == set(state)
    assert record["blocks.0.attn.q_proj.weight"].dtype == "float16"
    assert record["blocks.0.ln.bias"].dtype == "float16"  # bf16 input is accepted, sent as fp16
    assert record["position_ids"].dtype == "int64"
    back = array_record_to_state_dict(record)
    for name, t in state.items():
        assert back[name].shape == t.shape, name
        if t.is_floating_point():
            assert back[name].dtype == torch.float32
            torch.testing.assert_close(back[name], t.float(), rtol=1e-3, atol=1e-4)
        else:
            assert back[name].dtype == t.dtype
            assert torch.equal(back[name], t)
    # bf16 values are exactly representable in fp16 in the normal range.
    assert torch.equal(back["blocks.0.ln.bias"].to(torch.bfloat16), state["blocks.0.ln.bias"])


def test_requested_dtype_and_fp32_wire():
    state = sample_state()
    back = array_record_to_state_dict(state_dict_to_array_record(state), dtype=torch.bfloat16)
    assert back["blocks.0.attn.q_proj.weight"].dtype == torch.bfloat16
    assert back["position_ids"].dtype == torch.int64
    exact = array_record_to_state_dict(state_dict_to_array_record(state, wire_dtype=torch.float32))
    assert torch.equal(exact["blocks.0.attn.q_proj.weight"], state["blocks.0.attn.q_proj.weight"])


def test_non_finite_and_overflow_rejected():
    with pytest.raises(ProtocolError, match="NaN"):
        state_dict_to_array_record({"w": torch.tensor([1.0, float("nan")])})
    with pytest.raises(ProtocolError, match="overflows"):
        state_dict_to_array_record({"w": torch.tensor([1e6])})


def test_byte_accounting():
    state = {"w": torch.zeros(100, 10), "ids": torch.zeros(5, dtype=torch.int64)}
    assert state_dict_nbytes(state) == 4000 + 40
    assert state_dict_nbytes(state, wire_dtype=torch.float16) == 2000 + 40
    record = state_dict_to_array_record(state)
    # Wire bytes = raw bytes + numpy headers + key names.
    assert 2040 < array_record_nbytes(record) < 2040 + 2 * 200


def test_directory_round_trip_keeps_hash(tmp_path):
    src = tmp_path / "src"
    (src / "tok").mkdir(parents=True)
    (src / "weights.bin").write_bytes(bytes(range(256)) * 3)
    (src / "tok" / "vocab.json").write_text('{"a": 1}')
    (src / "empty.txt").write_bytes(b"")
    (src / "manifest.json").write_text("{}")
    record = directory_to_array_record(src, exclude={"manifest.json"})
    assert set(record) == {"weights.bin", "tok/vocab.json", "empty.txt"}
    dst = tmp_path / "dst"
    array_record_to_directory(record, dst)
    assert hash_directory(dst) == hash_directory(src, exclude={"manifest.json"})


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "a/../../b", "a//b", "./a", "a\\b", ""])
def test_directory_bundle_rejects_unsafe_paths(tmp_path, name):
    record = ArrayRecord({"ok.txt": Array(torch.zeros(1, dtype=torch.uint8).numpy())})
    record[name] = Array(torch.zeros(1, dtype=torch.uint8).numpy())
    with pytest.raises(ProtocolError, match="unsafe path"):
        array_record_to_directory(record, tmp_path / "out")
    assert not (tmp_path / "out" / "ok.txt").exists()  # nothing written before the check
