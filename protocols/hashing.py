"""Canonical SHA-256 digests of state dicts and directories (both sides must compute them identically)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch

_CHUNK = 1 << 20  # bytes read per step when hashing files, so multi-GB weights need no RAM copy


def _frame(h: hashlib._Hash, data: bytes) -> None:
    # Length-prefix every field so that no two different inputs produce the same byte stream
    # (e.g. names "ab"+"c" vs "a"+"bc").
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """Raw little-endian element bytes of a tensor in row-major order (any dtype, bf16 included)."""
    t = tensor.detach().cpu().contiguous().reshape(-1)
    # Viewing as uint8 reads bf16/bool/etc. without numpy, which cannot hold bf16.
    return t.view(torch.uint8).numpy().tobytes()


def hash_state_dict(state: Mapping[str, torch.Tensor]) -> str:
    """Hex SHA-256 over sorted names, each tensor's dtype, shape and raw bytes."""
    h = hashlib.sha256(b"offsite-state-dict-v1")
    for name in sorted(state):
        t = state[name]
        _frame(h, name.encode("utf-8"))
        _frame(h, str(t.dtype).encode("ascii"))
        _frame(h, ",".join(str(d) for d in t.shape).encode("ascii"))
        _frame(h, tensor_bytes(t))
    return h.hexdigest()


def hash_file(path: str | Path) -> str:
    """Hex SHA-256 of one file's contents."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def hash_directory(directory: str | Path, exclude: set[str] | frozenset[str] = frozenset()) -> str:
    """Hex SHA-256 over every file's relative POSIX path and contents, in sorted path order.

    `exclude` lists relative paths (e.g. {"manifest.json"}) left out, typically a manifest that
    itself records this hash. Empty directories, timestamps and permissions do not count.
    """
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    files = sorted(
        (p.relative_to(root).as_posix(), p)
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).as_posix() not in exclude
    )
    h = hashlib.sha256(b"offsite-directory-v1")
    for rel, path in files:
        _frame(h, rel.encode("utf-8"))
        h.update(path.stat().st_size.to_bytes(8, "little"))
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()
