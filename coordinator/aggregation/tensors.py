"""Plain-tensor aggregation of client deltas: FedAvg, task arithmetic, TIES, DARE (docs/architecture.md#aggregation-and-dare).

Every aggregator takes a list of client deltas (``dict[str, Tensor]``, the same names and shapes
for every client) and one weight per client (its example count; any non-negative numbers, they are
normalised here) and returns one delta with the same names and shapes. The maths runs in at least
float32; each result is cast back to the promoted dtype of the clients' tensors for that name.

``peft.utils.merge_utils`` is used for magnitude trimming and sign election. Its ``disjoint_merge``
is not: it divides by the *number* of agreeing clients, so example counts cannot weigh in (see
``weighted_disjoint_mean``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
from peft.utils.merge_utils import calculate_majority_sign_mask, magnitude_based_pruning

from protocols.seeds import dare_mask, merge_client_seed

Delta = dict[str, torch.Tensor]
Weights = Sequence[float] | torch.Tensor
SignMethod = Literal["total", "frequency"]

# --- validation ---------------------------------------------------------------------------------


def normalise_weights(weights: Weights, n: int) -> torch.Tensor:
    """Check per-client weights (example counts) and return them as float64 (n,) summing to 1."""
    try:
        w = torch.as_tensor(weights, dtype=torch.float64).detach().cpu().reshape(-1)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"weights must be a sequence of numbers, got {weights!r}") from e
    if w.numel() != n:
        raise ValueError(f"got {w.numel()} weight(s) for {n} client delta(s)")
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"weights must be finite, got {w.tolist()}")
    if bool((w < 0).any()):
        raise ValueError(f"weights (example counts) must be non-negative, got {w.tolist()}")
    total = float(w.sum())
    if total <= 0:
        raise ValueError("weights sum to zero: at least one client needs a positive example count")
    return w / total


def check_deltas(
    deltas: Sequence[Mapping[str, torch.Tensor]], weights: Weights, same_shapes: bool = True
) -> torch.Tensor:
    """Validate client deltas (names, shapes, float dtype, finite values); return normalised weights."""
    if len(deltas) == 0:
        raise ValueError("no client deltas to aggregate (empty list)")
    w = normalise_weights(weights, len(deltas))
    ref = deltas[0]
    if len(ref) == 0:
        raise ValueError("client 0 sent an empty delta (no tensors)")
    names = set(ref)
    for i, delta in enumerate(deltas):
        if set(delta) != names:
            missing, extra = sorted(names - set(delta)), sorted(set(delta) - names)
            raise ValueError(
                f"client {i} delta names differ from client 0's: missing {missing[:5]}, unexpected {extra[:5]}"
            )
        for name, t in delta.items():
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"client {i} {name!r} is a {type(t).__name__}, not a torch.Tensor")
            if not t.is_floating_point():
                raise ValueError(f"client {i} {name!r} has dtype {t.dtype}; deltas must be floating point")
            if same_shapes and t.shape != ref[name].shape:
                raise ValueError(
                    f"client {i} {name!r} has shape {tuple(t.shape)}, client 0's has {tuple(ref[name].shape)}"
                )
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                raise ValueError(f"client {i} {name!r} has {bad} non-finite value(s) (NaN or Inf)")
    return w


def _check_density(density: float) -> None:
    if isinstance(density, bool) or not isinstance(density, int | float) or not 0.0 < density <= 1.0:
        raise ValueError(f"density (fraction of entries kept) must be in (0, 1], got {density!r}")


def _check_p(p: float) -> None:
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p < 1.0:
        raise ValueError(f"DARE drop probability p must be in [0, 1), got {p!r}")


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < (1 << 63):
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")


# --- building blocks on stacked tensors (n clients on dim 0) -------------------------------------


def _stack(deltas: Sequence[Mapping[str, torch.Tensor]], name: str) -> tuple[torch.Tensor, torch.dtype]:
    ts = [d[name] for d in deltas]
    out_dtype = functools.reduce(torch.promote_types, (t.dtype for t in ts))
    compute = torch.promote_types(out_dtype, torch.float32)  # fp16/bf16 sums lose too much
    device = ts[0].device
    return torch.stack([t.to(device=device, dtype=compute) for t in ts]), out_dtype


def _broadcast(weights: torch.Tensor, stacked: torch.Tensor) -> torch.Tensor:
    return weights.to(device=stacked.device, dtype=stacked.dtype).view(-1, *([1] * (stacked.dim() - 1)))


def _per_tensor(
    deltas: Sequence[Mapping[str, torch.Tensor]],
    weights: torch.Tensor,
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Delta:
    out = {}
    for name in deltas[0]:
        stacked, out_dtype = _stack(deltas, name)
        out[name] = fn(stacked, weights).to(out_dtype)
    return out


def trim(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the top `density` fraction of entries by magnitude (k = floor(density·numel)), zero the rest."""
    _check_density(density)
    if density >= 1.0:
        return tensor  # peft's prune() would warn here; keeping everything is the intended meaning
    return magnitude_based_pruning(tensor, density)


def elect_sign_mask(
    stacked: torch.Tensor, weights: torch.Tensor, method: SignMethod = "total"
) -> torch.Tensor:
    """Bool (n, ...) mask: entries whose sign equals the weight-elected sign; zero entries never agree.

    "total": elected sign = sign(Σ_i w_i δ_i); "frequency": sign(Σ_i w_i sign δ_i). A tie (sum 0)
    elects +, as in peft. Positive weights never flip a sign, so feeding w_i·δ_i to peft's
    ``calculate_majority_sign_mask`` gives a weighted election whose mask still compares sign(δ_i).
    """
    wb = _broadcast(weights, stacked)
    if method == "total":
        votes = stacked * wb
    elif method == "frequency":
        votes = stacked.sign() * wb
    else:
        raise ValueError(f"unknown majority sign method {method!r}; use 'total' or 'frequency'")
    # A zero-weight client's votes become 0, so its mask is False; it would contribute nothing anyway.
    return calculate_majority_sign_mask(votes, method="total")


def weighted_disjoint_mean(stacked: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per entry Σ_i w_i m_i δ_i / Σ_i w_i m_i over the clients that agree (m_i), 0 where none does.

    peft's ``disjoint_merge`` divides by Σ_i m_i, the *count* of agreeing clients: with mixture
    weights (summing to 1) that shrinks every entry by roughly 1/count, and with raw example counts
    it inflates it; either way a client with 10x the data does not get 10x the say. Federated TIES
    needs the example-count-weighted mean of the agreeing entries, which this is. Scale-invariant in w.
    """
    wm = _broadcast(weights, stacked) * mask.to(stacked.dtype)
    num = (stacked * wm).sum(dim=0)
    den = wm.sum(dim=0)
    agreed = den > 0
    return torch.where(agreed, num / torch.where(agreed, den, torch.ones_like(den)), torch.zeros_like(num))


def _mean(stacked: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (stacked * _broadcast(weights, stacked)).sum(dim=0)


# --- DARE masks ---------------------------------------------------------------------------------


def dare_keep_mask(seed: int, name: str, shape: torch.Size | Sequence[int], p: float) -> torch.Tensor:
    """Bool keep-mask of `shape` (CPU), each entry kept with probability 1−p, rebuilt from (seed, name).

    Same convention as the upload codec (``protocols.codecs.dare_mask``, row-major ``torch.rand >= p``),
    so a mask drawn here matches one a client drew for the same seed and tensor name.
    """
    _check_p(p)
    _check_seed(seed)
    return dare_mask(seed, name, tuple(shape), p)


def dare_drop(delta: Mapping[str, torch.Tensor], p: float, seed: int) -> Delta:
    """DARE on one delta: zero each entry with probability p and scale survivors by 1/(1−p) (unbiased)."""
    _check_p(p)
    _check_seed(seed)
    out = {}
    for name, t in delta.items():
        keep = dare_keep_mask(seed, name, t.shape, p).to(t.device)
        compute = torch.promote_types(t.dtype, torch.float32)
        out[name] = (t.to(compute) * keep / (1.0 - p)).to(t.dtype)
    return out


def client_seed(seed: int, index: int) -> int:
    """Independent 63-bit DARE seed for client `index` of a merge seeded with `seed`."""
    _check_seed(seed)
    return merge_client_seed(seed, index)


# --- aggregators --------------------------------------------------------------------------------


def weighted_mean(deltas: Sequence[Mapping[str, torch.Tensor]], weights: Weights) -> Delta:
    """FedAvg: Σ_i w_i δ_i / Σ_i w_i per tensor, w_i = example counts."""
    w = check_deltas(deltas, weights)
    return _per_tensor(deltas, w, _mean)


def task_arithmetic(
    deltas: Sequence[Mapping[str, torch.Tensor]], weights: Weights, scale: float = 1.0
) -> Delta:
    """scale · weighted mean: scale=1 is FedAvg; scale=n with equal weights is the classic Σ_i δ_i."""
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale!r}")
    w = check_deltas(deltas, weights)
    return _per_tensor(deltas, w, lambda s, ww: scale * _mean(s, ww))


def magnitude_prune(deltas: Sequence[Mapping[str, torch.Tensor]], weights: Weights, density: float) -> Delta:
    """Trim each client's tensors to their top-`density` entries by magnitude, then weighted mean."""
    _check_density(density)
    w = check_deltas(deltas, weights)
    return _per_tensor(deltas, w, lambda s, ww: _mean(torch.stack([trim(t, density) for t in s]), ww))


def _ties_merge(stacked: torch.Tensor, weights: torch.Tensor, method: SignMethod) -> torch.Tensor:
    mask = elect_sign_mask(stacked, weights, method)
    return weighted_disjoint_mean(stacked, weights, mask)


def ties(
    deltas: Sequence[Mapping[str, torch.Tensor]],
    weights: Weights,
    density: float,
    majority_sign_method: SignMethod = "total",
) -> Delta:
    """TIES: trim each delta per tensor to top-`density`, elect signs by weighted vote, weighted disjoint mean.

    Unlike peft's ``ties`` the vote and the mean both weigh clients by example count; peft elects on
    unweighted tensors and divides by the count of agreeing clients.
    """
    _check_density(density)
    w = check_deltas(deltas, weights)
    return _per_tensor(
        deltas,
        w,
        lambda s, ww: _ties_merge(torch.stack([trim(t, density) for t in s]), ww, majority_sign_method),
    )


def _dare_all(deltas: Sequence[Mapping[str, torch.Tensor]], p: float, seed: int) -> list[Delta]:
    return [dare_drop(d, p, client_seed(seed, i)) for i, d in enumerate(deltas)]


def dare_linear(deltas: Sequence[Mapping[str, torch.Tensor]], weights: Weights, p: float, seed: int) -> Delta:
    """DARE each client's delta (drop prob p, rescale 1/(1−p), seeded), then weighted mean; unbiased."""
    _check_p(p)
    _check_seed(seed)
    w = check_deltas(deltas, weights)
    return _per_tensor(_dare_all(deltas, p, seed), w, _mean)


def dare_ties(
    deltas: Sequence[Mapping[str, torch.Tensor]],
    weights: Weights,
    p: float,
    seed: int,
    majority_sign_method: SignMethod = "total",
) -> Delta:
    """DARE each client's delta (as dare_linear), then weighted sign election and weighted disjoint mean."""
    _check_p(p)
    _check_seed(seed)
    w = check_deltas(deltas, weights)
    return _per_tensor(_dare_all(deltas, p, seed), w, lambda s, ww: _ties_merge(s, ww, majority_sign_method))
