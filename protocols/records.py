"""Flower record conversions both sides share: float32 master copies, content hashes, byte counts."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict

from protocols.hashing import hash_state_dict
from protocols.tensors import array_record_to_state_dict


def to_float32_record(
    state: Mapping[str, torch.Tensor | np.ndarray], names: list[str] | None = None
) -> ArrayRecord:
    """A float32 ArrayRecord of `state` (all tensors, or only `names`): a master copy, never the wire form."""
    keys = list(state) if names is None else names
    return ArrayRecord({k: Array(np.ascontiguousarray(float32_numpy(state[k]))) for k in keys})


def float32_numpy(value: torch.Tensor | np.ndarray) -> np.ndarray:
    """A float32 numpy copy of a tensor or array."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().float().contiguous().numpy()
    return np.array(value, dtype=np.float32)


def from_float32_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """Float32 tensors from an ArrayRecord (FedAdam/FedYogi hand back float64)."""
    return {k: torch.from_numpy(float32_numpy(a.numpy())) for k, a in record.items()}


def record_sha256(record: ArrayRecord) -> str:
    """SHA-256 of an ArrayRecord's tensors as sent (wire dtypes): the adapter manifest's content hash."""
    return hash_state_dict(array_record_to_state_dict(record, dtype=None))


def content_nbytes(content: RecordDict) -> int:
    """Bytes of every record in a message's content."""
    return int(sum(record.count_bytes() for record in content.values()))
