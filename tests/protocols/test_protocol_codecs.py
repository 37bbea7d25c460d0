"""Update codecs: exactness, unbiasedness, byte savings, and clear failures."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from protocols import codecs
from protocols.codecs import DareMagnitudeWarning, decode, encode, encoded_nbytes, from_records, to_records
from protocols.schema import ProtocolError


def small_delta(scale: float = 1e-3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "blocks.0.mlp.weight": torch.randn(16, 8, generator=g) * scale,
        "blocks.0.mlp.bias": torch.randn(8, generator=g) * scale,
        "blocks.11.ln.weight": torch.randn(8, generator=g).to(torch.bfloat16) * scale,
    }


def through_wire(enc: codecs.Encoded) -> codecs.Encoded:
    arrays, meta = to_records(enc)
    return from_records(arrays, meta)


def test_dare_exact_on_kept_entries_and_zero_elsewhere():
    delta, p, seed = small_delta(), 0.7, 1234
    out = decode(through_wire(encode(delta, "dare", p=p, seed=seed)), expected=delta)
    for name, t in delta.items():
        keep = codecs.dare_mask(seed, name, t.numel(), p).reshape(t.shape)
        want = (t.float() * (1 / (1 - p))).half().float()
        assert torch.equal(out[name][keep], want[keep]), name
        assert torch.count_nonzero(out[name][~keep]) == 0, name


def test_dare_mask_is_deterministic_per_seed_and_name():
    a = codecs.dare_mask(7, "w", 1000, 0.5)
    assert torch.equal(a, codecs.dare_mask(7, "w", 1000, 0.5))
    assert not torch.equal(a, codecs.dare_mask(8, "w", 1000, 0.5))
    assert not torch.equal(a, codecs.dare_mask(7, "v", 1000, 0.5))
    assert abs(a.float().mean().item() - 0.5) < 0.06


def test_dare_is_unbiased_in_expectation():
    p, n = 0.8, 400
    delta = {"w": torch.linspace(-1e-3, 1e-3, 64).reshape(8, 8)}
    total = torch.zeros(8, 8)
    for seed in range(n):
        total += decode(encode(delta, "dare", p=p, seed=seed))["w"]
    mean = total / n
    # Per entry, the estimate has std |d| * sqrt(p / (1 - p) / n); allow 5 sigma plus fp16 rounding.
    tol = 5 * delta["w"].abs() * math.sqrt(p / (1 - p) / n) + 1e-6
    assert bool(((mean - delta["w"]).abs() <= tol).all())
    # Averaging is what removes the error: one draw alone is far off.
    one = decode(encode(delta, "dare", p=p, seed=n))["w"]
    assert (one - delta["w"]).abs().mean() > 5 * (mean - delta["w"]).abs().mean()
    # Without the 1/(1-p) rescale the mean would sit at (1-p)*d, outside the tolerance.
    assert not bool((((1 - p) * delta["w"] - delta["w"]).abs() <= tol).all())


def test_dare_p09_sends_about_a_tenth_of_fp16():
    delta = {"w": torch.randn(128, 256) * 1e-3}
    dense = encoded_nbytes(encode(delta, "fp16"))
    sparse = encoded_nbytes(encode(delta, "dare", p=0.9, seed=0))
    assert 0.085 < sparse / dense < 0.115, sparse / dense


def test_dare_p0_is_dense_fp16():
    delta = small_delta()
    out = decode(encode(delta, "dare", p=0.0, seed=1))
    for name, t in delta.items():
        assert torch.equal(out[name], t.float().half().float())


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan")])
def test_dare_rejects_p_outside_unit_interval(p):
    with pytest.raises(ProtocolError, match="p must be in"):
        encode(small_delta(), "dare", p=p, seed=0)


def test_dare_warns_on_large_delta_only():
    with pytest.warns(DareMagnitudeWarning, match="max\\|delta\\|"):
        encode(small_delta(scale=0.1), "dare", p=0.5, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encode(small_delta(scale=1e-4), "dare", p=0.5, seed=0)
    assert codecs.max_abs({"a": torch.tensor([0.1, -0.3]), "b": torch.tensor([0.2])}) == pytest.approx(0.3)


def test_dare_decode_rejects_values_not_matching_the_mask():
    enc = encode(small_delta(), "dare", p=0.5, seed=3)
    enc.arrays["blocks.0.mlp.bias"] = enc.arrays["blocks.0.mlp.bias"][:-1]
    with pytest.raises(ProtocolError, match="blocks.0.mlp.bias"):
        decode(enc)
    enc = encode(small_delta(), "dare", p=0.5, seed=3)
    enc.meta[codecs.META_DARE_SEED] = 4  # another seed rebuilds another mask: counts differ
    with pytest.raises(ProtocolError, match="values, expected"):
        decode(enc)


def test_topk_keeps_largest_magnitudes():
    delta = small_delta()
    out = decode(through_wire(encode(delta, "topk", fraction=0.25)), expected=delta)
    for name, t in delta.items():
        flat, got = t.float().reshape(-1), out[name].reshape(-1)
        k = math.ceil(0.25 * flat.numel())
        kept = got != 0
        assert int(kept.sum()) == k
        assert flat[kept].abs().min() >= flat[~kept].abs().max()
        torch.testing.assert_close(got[kept], flat[kept], rtol=1e-3, atol=0)


def test_int8_round_trip_within_half_a_step():
    delta = small_delta()
    delta["zeros"] = torch.zeros(3, 3)
    enc = through_wire(encode(delta, "int8"))
    assert all(t.dtype == torch.int8 for t in enc.arrays.values())
    out = decode(enc, expected=delta)
    for name, t in delta.items():
        step = t.float().abs().max().item() / 127
        assert (out[name] - t.float()).abs().max().item() <= step / 2 + 1e-9, name
    assert torch.count_nonzero(out["zeros"]) == 0


def test_fp16_round_trip_and_requested_dtype():
    delta = small_delta()
    out = decode(through_wire(encode(delta, "fp16")), expected=delta, dtype=torch.bfloat16)
    for name, t in delta.items():
        assert out[name].dtype == torch.bfloat16
        torch.testing.assert_close(out[name].float(), t.float(), rtol=1e-2, atol=1e-6)


@pytest.mark.parametrize(
    ("codec", "params"),
    [("fp16", {}), ("dare", {"p": 0.5, "seed": 0}), ("topk", {"fraction": 0.5}), ("int8", {})],
)
def test_nan_and_inf_inputs_rejected(codec, params):
    for bad in (float("nan"), float("inf")):
        delta = small_delta()
        delta["blocks.0.mlp.bias"][3] = bad
        with pytest.raises(ProtocolError, match="NaN or inf"):
            encode(delta, codec, **params)


def test_decode_checks_names_and_shapes_against_expected():
    delta = small_delta()
    enc = encode(delta, "fp16")
    wrong_shape = dict(delta, **{"blocks.0.mlp.bias": torch.zeros(9)})
    with pytest.raises(ProtocolError, match="shapes do not match.*blocks.0.mlp.bias"):
        decode(enc, expected=wrong_shape)
    with pytest.raises(ProtocolError, match="missing \\['extra.weight'\\]"):
        decode(enc, expected=dict(delta, **{"extra.weight": (2, 2)}))


def test_decode_rejects_tampered_wire_data():
    enc = through_wire(encode(small_delta(), "fp16"))
    enc.arrays["blocks.0.mlp.weight"] = enc.arrays["blocks.0.mlp.weight"].float()
    with pytest.raises(ProtocolError, match="dtype torch.float32, expected torch.float16"):
        decode(enc)
    enc = encode(small_delta(), "fp16")
    enc.arrays["blocks.0.mlp.weight"][0, 0] = float("nan")
    with pytest.raises(ProtocolError, match="NaN"):
        decode(enc)
    enc = encode(small_delta(), "fp16")
    enc.meta[codecs.META_VERSION] = 99
    with pytest.raises(ProtocolError, match="protocol version 99"):
        decode(enc)


def test_unknown_codec_and_bad_params():
    with pytest.raises(ProtocolError, match="unknown codec 'zip'"):
        encode(small_delta(), "zip")
    with pytest.raises(TypeError, match="missing \\['seed'\\]"):
        encode(small_delta(), "dare", p=0.5)
    with pytest.raises(ProtocolError, match="floating"):
        encode({"ids": torch.arange(3)}, "fp16")


def test_wire_records_hold_only_flower_types():
    arrays, meta = to_records(encode(small_delta(), "topk", fraction=0.5))
    assert {a.dtype for a in arrays.values()} == {"float16", "int32"}
    assert all(isinstance(v, int | float | str | bool) for v in meta.values())
