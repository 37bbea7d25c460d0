"""Update codecs (fp16, DARE, top-k, int8): encode an adapter delta for upload, decode it on arrival.

An `Encoded` update is a dict of wire tensors plus a flat metadata dict of scalars, so it fits a
Flower ArrayRecord + ConfigRecord pair (see `to_records` / `from_records`). Metadata carries the
codec name, its parameters, the protocol version and a JSON "layout" listing every original tensor
(name, shape and per-codec extras) in sorted name order.

Wire tensor names are the original names for fp16 and int8, and "<role>:<name>" for codecs that
send several tensors per original (top-k: "values:", "indices:"), so no name can collide.

DARE masks are never sent: the receiver rebuilds each tensor's mask from the integer seed. The
per-tensor generator seed is the first 8 bytes of SHA-256("<seed>:<tensor name>"), masked to 63 bits,
fed to a CPU `torch.Generator`; the mask is `torch.rand(numel) >= p` in row-major order. Both sides
must therefore run the same torch version (the CPU Mersenne Twister stream is stable in practice).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord

from protocols.schema import PROTOCOL_VERSION, ProtocolError
from protocols.seeds import dare_mask
from protocols.tensors import array_record_to_state_dict, state_dict_to_array_record

# DARE's rescaling is only harmless while deltas stay small (DARE paper; docs/architecture.md#aggregation-and-dare).
DARE_SAFE_MAX_ABS = 0.005

# Metadata keys (ConfigRecord keys of the "update-meta" record).
META_CODEC = "codec"
META_VERSION = "protocol-version"
META_LAYOUT = "layout"
META_DARE_P = "dare-p"
META_DARE_SEED = "dare-seed"
META_TOPK_FRACTION = "topk-fraction"

MetaValue = int | float | str | bool


class DareMagnitudeWarning(UserWarning):
    """max|delta| is above DARE_SAFE_MAX_ABS, where drop-and-rescale starts to hurt."""


@dataclass
class Encoded:
    """An encoded update: wire tensors (fp16/int8/int32/int64) and flat scalar metadata."""

    codec: str
    arrays: dict[str, torch.Tensor]
    meta: dict[str, MetaValue] = field(default_factory=dict)


@dataclass(frozen=True)
class _Entry:
    name: str
    shape: tuple[int, ...]
    extra: dict[str, Any]


# --- helpers -------------------------------------------------------------------------------------


def max_abs(delta: Mapping[str, torch.Tensor]) -> float:
    """Largest |x| over all tensors of a delta (0.0 for an empty delta); NaN if any value is NaN."""
    m = 0.0
    for t in delta.values():
        if t.numel():
            v = t.detach().abs().max().item()
            if math.isnan(v):
                return math.nan
            m = max(m, v)
    return m


def _check_delta(delta: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """Sorted (name, fp32 cpu tensor) pairs; rejects non-float and non-finite tensors."""
    out = []
    for name in sorted(delta):
        t = delta[name]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"delta entry {name!r} is {type(t).__name__}, expected a torch.Tensor")
        if not t.is_floating_point():
            raise ProtocolError(
                f"delta entry {name!r} has dtype {t.dtype}; codecs take floating tensors only"
            )
        t = t.detach().to("cpu", torch.float32)
        if not bool(torch.isfinite(t).all()):
            raise ProtocolError(f"delta entry {name!r} contains NaN or inf; refusing to encode it")
        out.append((name, t))
    return out


def _to_fp16(name: str, t: torch.Tensor) -> torch.Tensor:
    h = t.to(torch.float16)
    if not bool(torch.isfinite(h).all()):
        raise ProtocolError(f"{name!r} overflows float16 (max |x| = {t.abs().max().item():.4g})")
    return h


def _layout_entry(name: str, t: torch.Tensor, **extra: Any) -> dict[str, Any]:
    return {"name": name, "shape": list(t.shape), **extra}


def _parse_layout(meta: Mapping[str, MetaValue]) -> list[_Entry]:
    raw = meta.get(META_LAYOUT)
    if not isinstance(raw, str):
        raise ProtocolError(f"encoded update has no {META_LAYOUT!r} string in its metadata")
    try:
        items = json.loads(raw)
        entries = [
            _Entry(
                name=str(d["name"]),
                shape=tuple(int(s) for s in d["shape"]),
                extra={k: v for k, v in d.items() if k not in ("name", "shape")},
            )
            for d in items
        ]
    except (ValueError, KeyError, TypeError) as err:
        raise ProtocolError(f"encoded update has a malformed layout: {err}") from err
    if any(s < 0 for e in entries for s in e.shape):
        raise ProtocolError("encoded update layout has a negative dimension")
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ProtocolError("encoded update layout lists a tensor twice")
    return entries


def _expect_arrays(encoded: Encoded, wanted: set[str]) -> None:
    got = set(encoded.arrays)
    missing, extra = sorted(wanted - got), sorted(got - wanted)
    if missing or extra:
        raise ProtocolError(
            f"{encoded.codec} update arrays do not match its layout (missing {missing[:5]}, unexpected {extra[:5]})"
        )


def _wire(encoded: Encoded, key: str, dtype: torch.dtype, numel: int | None = None) -> torch.Tensor:
    t = encoded.arrays[key]
    if t.dtype != dtype:
        raise ProtocolError(f"{encoded.codec} array {key!r} has dtype {t.dtype}, expected {dtype}")
    if numel is not None and t.numel() != numel:
        raise ProtocolError(f"{encoded.codec} array {key!r} has {t.numel()} values, expected {numel}")
    return t


def _check_finite_wire(key: str, t: torch.Tensor) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ProtocolError(f"received array {key!r} contains NaN or inf")


# --- fp16 ---------------------------------------------------------------------------------------


def _encode_fp16(items: list[tuple[str, torch.Tensor]]) -> Encoded:
    arrays = {name: _to_fp16(name, t) for name, t in items}
    layout = [_layout_entry(name, t) for name, t in items]
    return Encoded("fp16", arrays, {META_LAYOUT: json.dumps(layout)})


def _decode_fp16(encoded: Encoded, entries: list[_Entry]) -> dict[str, torch.Tensor]:
    _expect_arrays(encoded, {e.name for e in entries})
    out = {}
    for e in entries:
        t = _wire(encoded, e.name, torch.float16, math.prod(e.shape))
        out[e.name] = t.float().reshape(e.shape)
    return out


# --- DARE ---------------------------------------------------------------------------------------


def _encode_dare(items: list[tuple[str, torch.Tensor]], p: float, seed: int) -> Encoded:
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p < 1.0:
        raise ProtocolError(f"DARE drop probability p must be in [0, 1), got {p!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < (1 << 63):
        raise ProtocolError(f"DARE seed must be an int in [0, 2**63) (it travels as int64), got {seed!r}")
    m = max_abs(dict(items))
    if m > DARE_SAFE_MAX_ABS:
        warnings.warn(
            f"DARE on a delta with max|delta| = {m:.4g} > {DARE_SAFE_MAX_ABS}: drop-and-rescale is only "
            "reliable for small deltas; consider a lower p, fewer local steps, or another codec",
            DareMagnitudeWarning,
            stacklevel=3,
        )
    scale = 1.0 / (1.0 - p)
    arrays, layout = {}, []
    for name, t in items:
        keep = dare_mask(seed, name, t.numel(), p)
        arrays[name] = _to_fp16(name, t.reshape(-1)[keep] * scale)
        layout.append(_layout_entry(name, t))
    meta: dict[str, MetaValue] = {
        META_LAYOUT: json.dumps(layout),
        META_DARE_P: float(p),
        META_DARE_SEED: seed,
    }
    return Encoded("dare", arrays, meta)


def _decode_dare(encoded: Encoded, entries: list[_Entry]) -> dict[str, torch.Tensor]:
    p, seed = encoded.meta.get(META_DARE_P), encoded.meta.get(META_DARE_SEED)
    if not isinstance(p, int | float) or isinstance(p, bool) or not 0.0 <= p < 1.0:
        raise ProtocolError(f"DARE update has invalid {META_DARE_P!r}: {p!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ProtocolError(f"DARE update has invalid {META_DARE_SEED!r}: {seed!r}")
    _expect_arrays(encoded, {e.name for e in entries})
    out = {}
    for e in entries:
        numel = math.prod(e.shape)
        keep = dare_mask(seed, e.name, numel, float(p))
        values = _wire(encoded, e.name, torch.float16, int(keep.sum()))
        dense = torch.zeros(numel, dtype=torch.float32)
        dense[keep] = values.float()
        out[e.name] = dense.reshape(e.shape)
    return out


# --- top-k --------------------------------------------------------------------------------------


def _encode_topk(items: list[tuple[str, torch.Tensor]], fraction: float) -> Encoded:
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 < fraction <= 1.0:
        raise ProtocolError(f"top-k fraction must be in (0, 1], got {fraction!r}")
    arrays, layout = {}, []
    for name, t in items:
        flat = t.reshape(-1)
        k = min(flat.numel(), max(1, math.ceil(fraction * flat.numel()))) if flat.numel() else 0
        idx = torch.topk(flat.abs(), k, sorted=False).indices if k else torch.zeros(0, dtype=torch.int64)
        idx = torch.sort(idx).values  # sorted indices compress better and make decoding order-free
        index_dtype = torch.int32 if flat.numel() < 2**31 else torch.int64
        arrays[f"values:{name}"] = _to_fp16(name, flat[idx])
        arrays[f"indices:{name}"] = idx.to(index_dtype)
        layout.append(_layout_entry(name, t))
    meta: dict[str, MetaValue] = {META_LAYOUT: json.dumps(layout), META_TOPK_FRACTION: float(fraction)}
    return Encoded("topk", arrays, meta)


def _decode_topk(encoded: Encoded, entries: list[_Entry]) -> dict[str, torch.Tensor]:
    _expect_arrays(encoded, {f"{role}:{e.name}" for e in entries for role in ("values", "indices")})
    out = {}
    for e in entries:
        numel = math.prod(e.shape)
        values = _wire(encoded, f"values:{e.name}", torch.float16)
        idx = encoded.arrays[f"indices:{e.name}"]
        if idx.dtype not in (torch.int32, torch.int64) or idx.shape != values.shape or idx.dim() != 1:
            raise ProtocolError(f"top-k indices for {e.name!r} must be int32/int64 of the values' length")
        idx = idx.long()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= numel):
            raise ProtocolError(f"top-k indices for {e.name!r} fall outside its {numel} entries")
        if idx.unique().numel() != idx.numel():
            raise ProtocolError(f"top-k indices for {e.name!r} repeat")
        dense = torch.zeros(numel, dtype=torch.float32)
        dense[idx] = values.float()
        out[e.name] = dense.reshape(e.shape)
    return out


# --- int8 ---------------------------------------------------------------------------------------


def _encode_int8(items: list[tuple[str, torch.Tensor]]) -> Encoded:
    arrays, layout = {}, []
    for name, t in items:
        # Symmetric per tensor: one fp32 scale maps [-max|x|, max|x|] onto [-127, 127].
        amax = t.abs().max().item() if t.numel() else 0.0
        scale = float(torch.tensor(amax / 127.0, dtype=torch.float32))
        q = torch.zeros_like(t, dtype=torch.int8) if scale == 0.0 else (t / scale).round().clamp(-127, 127)
        arrays[name] = q.to(torch.int8)
        # Python floats print round-trippably in JSON, so the fp32 scale arrives bit-exact.
        layout.append(_layout_entry(name, t, scale=scale))
    return Encoded("int8", arrays, {META_LAYOUT: json.dumps(layout)})


def _decode_int8(encoded: Encoded, entries: list[_Entry]) -> dict[str, torch.Tensor]:
    _expect_arrays(encoded, {e.name for e in entries})
    out = {}
    for e in entries:
        scale = e.extra.get("scale")
        if (
            isinstance(scale, bool)
            or not isinstance(scale, int | float)
            or not math.isfinite(scale)
            or scale < 0
        ):
            raise ProtocolError(f"int8 update has an invalid scale for {e.name!r}: {scale!r}")
        q = _wire(encoded, e.name, torch.int8, math.prod(e.shape))
        out[e.name] = (q.float() * torch.tensor(scale, dtype=torch.float32)).reshape(e.shape)
    return out


# --- registry and public API --------------------------------------------------------------------


@dataclass(frozen=True)
class Codec:
    """A registered codec: its encoder (sorted fp32 items, **params) and decoder (encoded, layout)."""

    name: str
    encode: Callable[..., Encoded]
    decode: Callable[[Encoded, list[_Entry]], dict[str, torch.Tensor]]
    params: tuple[str, ...] = ()
    # parameter -> the run-config key that sets it, which is also its key in the train message's config
    config_keys: dict[str, str] = field(default_factory=dict)
    # the site draws this codec's randomness from its per-round seed
    seeded: bool = False

    def params_from(self, config: Mapping[str, Any], seed: int | None = None) -> dict[str, Any]:
        """This codec's keyword arguments from a config holding its keys (and the site's round seed)."""
        out = {param: config[key] for param, key in self.config_keys.items() if key in config}
        if self.seeded:
            out["seed"] = seed
        return out


CODECS: dict[str, Codec] = {
    c.name: c
    for c in (
        Codec("fp16", _encode_fp16, _decode_fp16),
        Codec("dare", _encode_dare, _decode_dare, ("p", "seed"), {"p": "dare-p"}, seeded=True),
        Codec("topk", _encode_topk, _decode_topk, ("fraction",), {"fraction": "topk-fraction"}),
        Codec("int8", _encode_int8, _decode_int8),
    )
}


def _codec(name: Any) -> Codec:
    try:
        return CODECS[name]
    except (KeyError, TypeError):
        raise ProtocolError(f"unknown codec {name!r}; known: {', '.join(sorted(CODECS))}") from None


def encode(delta: Mapping[str, torch.Tensor], codec: str = "fp16", **params: Any) -> Encoded:
    """Encode a float delta {name: tensor}. Params: dare (p, seed), topk (fraction); others none."""
    spec = _codec(codec)
    unknown, missing = sorted(set(params) - set(spec.params)), sorted(set(spec.params) - set(params))
    if unknown or missing:
        raise TypeError(
            f"codec {codec!r} takes parameters {list(spec.params)}; missing {missing}, unexpected {unknown}"
        )
    enc = spec.encode(_check_delta(delta), **params)
    enc.meta[META_CODEC] = spec.name
    enc.meta[META_VERSION] = PROTOCOL_VERSION
    return enc


def _expected_shapes(expected: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v) for k, v in expected.items()}


def decode(
    encoded: Encoded,
    expected: Mapping[str, torch.Tensor | Sequence[int]] | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Decode to dense tensors of `dtype`; if `expected` ({name: tensor or shape}) is given, names and shapes must match it."""
    version = encoded.meta.get(META_VERSION)
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise ProtocolError(
            f"encoded update has protocol version {version!r}, this side speaks {PROTOCOL_VERSION}"
        )
    name = encoded.meta.get(META_CODEC, encoded.codec)
    if name != encoded.codec:
        raise ProtocolError(f"encoded update says codec {encoded.codec!r} but its metadata says {name!r}")
    spec = _codec(name)
    entries = _parse_layout(encoded.meta)
    # Pass `expected` for anything received from a client: without it, the sender's layout alone
    # decides which names appear and how much memory decoding allocates.
    if expected is not None:
        want = _expected_shapes(expected)
        got = {e.name: e.shape for e in entries}
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        if missing or extra:
            raise ProtocolError(f"update names do not match (missing {missing[:5]}, unexpected {extra[:5]})")
        bad = [f"{k}: {got[k]} != {want[k]}" for k in sorted(want) if got[k] != want[k]]
        if bad:
            raise ProtocolError(f"update shapes do not match: {'; '.join(bad[:5])}")
    for key, t in encoded.arrays.items():
        _check_finite_wire(key, t)
    out = spec.decode(encoded, entries)
    return {k: v.to(dtype) for k, v in out.items()}


def encoded_nbytes(encoded: Encoded) -> int:
    """Payload bytes of an encoded update: raw wire-tensor bytes plus metadata (strings as UTF-8, numbers 8 B)."""
    n = sum(t.numel() * t.element_size() for t in encoded.arrays.values())
    for key, value in encoded.meta.items():
        n += len(key.encode())
        n += len(value.encode()) if isinstance(value, str) else 1 if isinstance(value, bool) else 8
    return n


def to_records(encoded: Encoded) -> tuple[ArrayRecord, ConfigRecord]:
    """Wire form: an ArrayRecord of the encoded tensors and a ConfigRecord of its metadata."""
    return state_dict_to_array_record(encoded.arrays), ConfigRecord(dict(encoded.meta))


def from_records(arrays: ArrayRecord, meta: ConfigRecord | Mapping[str, Any]) -> Encoded:
    """Rebuild an `Encoded` from the records made by `to_records` (wire dtypes are kept)."""
    meta = dict(meta)
    codec = meta.get(META_CODEC)
    if not isinstance(codec, str):
        raise ProtocolError(f"update metadata has no {META_CODEC!r} string")
    # Keep wire dtypes as sent, so decode can reject an fp32 array where the codec sends fp16.
    return Encoded(codec, array_record_to_state_dict(arrays, dtype=None), meta)
