"""State dicts and file bundles to and from Flower ArrayRecords, plus byte accounting."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from protocols.schema import ProtocolError

WIRE_FLOAT_DTYPE = torch.float16
# ArrayRecord serialises through numpy, which has no bfloat16. fp16 halves fp32 and holds every bf16
# value with 6e-5 <= |x| <= 65504 exactly (more mantissa bits, less range).
_WIRE_FLOAT_DTYPES = (torch.float16, torch.float32)


def _to_numpy(name: str, tensor: torch.Tensor, wire_dtype: torch.dtype) -> np.ndarray:
    t = tensor.detach().cpu()
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all()):
            raise ProtocolError(f"tensor {name!r} has NaN or inf values; refusing to send it")
        wire = t.to(wire_dtype)
        if not bool(torch.isfinite(wire).all()):
            raise ProtocolError(
                f"tensor {name!r} overflows {wire_dtype} (max |x| = {t.abs().max().item():.4g}); "
                "send it in float32"
            )
        return wire.contiguous().numpy()
    if t.is_complex():
        raise ProtocolError(f"tensor {name!r} is complex ({t.dtype}); not supported on the wire")
    return t.contiguous().numpy()


def state_dict_to_array_record(
    state: Mapping[str, torch.Tensor], wire_dtype: torch.dtype = WIRE_FLOAT_DTYPE
) -> ArrayRecord:
    """Pack tensors for the wire: floats (fp32/bf16/fp16) cast to `wire_dtype`, integers/bools kept."""
    if wire_dtype not in _WIRE_FLOAT_DTYPES:
        raise ValueError(f"wire_dtype must be one of {_WIRE_FLOAT_DTYPES}, got {wire_dtype}")
    record = ArrayRecord()
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise TypeError(f"expected dict[str, torch.Tensor], got entry {name!r}: {type(tensor).__name__}")
        record[name] = Array.from_numpy_ndarray(_to_numpy(name, tensor, wire_dtype))
    return record


def array_record_to_state_dict(
    record: ArrayRecord, dtype: torch.dtype | None = torch.float32, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Unpack an ArrayRecord to tensors: floating arrays cast to `dtype` (None: as sent), integer/bool kept."""
    out: dict[str, torch.Tensor] = {}
    for name, array in record.items():
        try:
            nd = array.numpy()
        except (TypeError, ValueError) as err:
            raise ProtocolError(f"array {name!r} cannot be decoded: {err}") from err
        if tuple(nd.shape) != tuple(array.shape):
            raise ProtocolError(f"array {name!r}: declared shape {tuple(array.shape)} but data is {nd.shape}")
        # np.load returns a fresh array, so the tensor never aliases the message's bytes.
        t = torch.from_numpy(nd)
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[name] = t.to(device)
    return out


def state_dict_nbytes(state: Mapping[str, torch.Tensor], wire_dtype: torch.dtype | None = None) -> int:
    """Raw tensor bytes of a state dict, as stored (or as `wire_dtype` for floating tensors)."""
    total = 0
    for t in state.values():
        size = t.element_size()
        if wire_dtype is not None and t.is_floating_point():
            size = torch.empty((), dtype=wire_dtype).element_size()
        total += t.numel() * size
    return total


def array_record_nbytes(record: ArrayRecord) -> int:
    """Bytes an ArrayRecord puts on the wire: data incl. numpy headers (~128 B/array) plus key names."""
    return int(record.count_bytes())


# --- directories (e.g. a stand-in) as one ArrayRecord of uint8 arrays --------------------------


def _safe_relpath(name: str) -> PurePosixPath:
    rel = PurePosixPath(name)
    # A received bundle decides where files land; never let it escape the destination.
    # Canonical form only ("a/b", not "a//b" or "./a"), so two entries can never name one file.
    if rel.is_absolute() or rel.as_posix() != name or ".." in rel.parts or "\\" in name or name in ("", "."):
        raise ProtocolError(f"unsafe path in file bundle: {name!r}")
    return rel


def directory_to_array_record(
    directory: str | Path, exclude: set[str] | frozenset[str] = frozenset()
) -> ArrayRecord:
    """Pack every file under `directory` (relative POSIX path -> uint8 array of its bytes)."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    record = ArrayRecord()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in exclude:
            continue
        data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        record[rel] = Array.from_numpy_ndarray(data)
    return record


def array_record_to_directory(record: ArrayRecord, directory: str | Path) -> list[Path]:
    """Write a bundle made by `directory_to_array_record` under `directory`; return the written paths."""
    root = Path(directory)
    # Validate every entry before writing anything, so a bad bundle leaves no partial files.
    targets = []
    for name, array in record.items():
        if array.dtype != "uint8" or len(array.shape) != 1:
            raise ProtocolError(
                f"bundle entry {name!r} is {array.dtype}{list(array.shape)}, expected uint8[n]"
            )
        targets.append((root.joinpath(*_safe_relpath(name).parts), name))
    written = []
    for path, name in targets:
        array = record[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(array.numpy().tobytes())
        written.append(path)
    return written
