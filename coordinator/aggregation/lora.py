"""Exact LoRA aggregation in product space, and FFA-LoRA (docs/architecture.md#aggregation-and-dare).

A LoRA module adds ΔW = s·B·A to a frozen weight, with A: (r, in), B: (out, r) and s = alpha/r.
Averaging A and B separately gives mean(B)·mean(A), which is not mean(B·A): the cross terms
B_i·A_j (i ≠ j) are noise. Two exact alternatives live here:

* ``product_space_mean``: average ΔW_i per module and factor the mean back into rank-r A, B by
  truncated SVD (exact when the mean has rank ≤ r; Σ_i r_i always suffices);
* ``ffa_mean``: with A frozen and shared by every client (FFA-LoRA), mean(B)·A = mean(B·A).

State dicts are peft LoRA state dicts: keys ``<module>.lora_A[.<adapter>].weight`` (r, in) and
``<module>.lora_B[.<adapter>].weight`` (out, r); embedding LoRA (``lora_embedding_A/B``) pairs the
same way. Any other key (DoRA magnitudes, modules_to_save, LoRA biases) is a plain parameter and
is averaged by example count.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Literal

import torch

from coordinator.aggregation.tensors import Delta, Weights, check_deltas, weighted_mean

State = Mapping[str, torch.Tensor]
Split = Literal["orthonormal_a", "balanced"]

_A_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<emb>embedding_)?A(?P<rest>(?:\.[^.]+)*)$")


def lora_modules(state: State) -> dict[str, tuple[str, str]]:
    """Map each LoRA module name (key prefix before ``.lora_``) to its (A key, B key)."""
    out: dict[str, tuple[str, str]] = {}
    for key in state:
        m = _A_KEY.match(key)
        if not m:
            continue
        b_key = f"{m['module']}.lora_{m['emb'] or ''}B{m['rest']}"
        if b_key not in state:
            raise ValueError(f"LoRA factor {key!r} has no matching {b_key!r}")
        module = m["module"]
        if module in out:
            raise ValueError(f"module {module!r} has several LoRA pairs ({out[module][0]!r}, {key!r})")
        out[module] = (key, b_key)
    paired_b = {b for _, b in out.values()}
    for key in state:
        if re.search(r"\.lora_(embedding_)?B(\.|$)", key) and key not in paired_b:
            raise ValueError(f"LoRA factor {key!r} has no matching lora_A")
    return out


def _shapes(state: State, a_key: str, b_key: str, client: int) -> tuple[int, int, int]:
    """(rank, in, out) of one module, after checking that A: (r, in) and B: (out, r) fit."""
    a, b = state[a_key], state[b_key]
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(
            f"client {client} {a_key!r}/{b_key!r} have shapes {tuple(a.shape)}/{tuple(b.shape)}; "
            "only 2-D (linear/embedding) LoRA factors are supported"
        )
    if a.shape[0] != b.shape[1]:
        raise ValueError(
            f"client {client} {a_key!r} has rank {a.shape[0]} but {b_key!r} has rank {b.shape[1]}"
        )
    return a.shape[0], a.shape[1], b.shape[0]


def _check_states(
    states: Sequence[State], weights: Weights
) -> tuple[torch.Tensor, dict[str, tuple[str, str]]]:
    # Ranks may differ between clients (heterogeneous LoRA), so shapes are checked per module below.
    w = check_deltas(states, weights, same_shapes=False)
    modules = lora_modules(states[0])
    if not modules:
        raise ValueError("no LoRA factors (keys with .lora_A / .lora_B) in client 0's state")
    factor_keys = {k for pair in modules.values() for k in pair}
    for name in states[0]:
        if name not in factor_keys:
            shapes = {tuple(s[name].shape) for s in states}
            if len(shapes) > 1:
                raise ValueError(
                    f"non-LoRA tensor {name!r} has different shapes across clients: {sorted(shapes)}"
                )
    for module, (a_key, b_key) in modules.items():
        _, fan_in, fan_out = _shapes(states[0], a_key, b_key, 0)
        for i, state in enumerate(states[1:], start=1):
            _, i_in, i_out = _shapes(state, a_key, b_key, i)
            if (i_in, i_out) != (fan_in, fan_out):
                raise ValueError(
                    f"client {i} module {module!r} maps {i_in}->{i_out}, client 0's maps {fan_in}->{fan_out}"
                )
    return w, modules


def _scalings(scaling: float | Sequence[float], n: int) -> list[float]:
    values = [float(scaling)] * n if isinstance(scaling, int | float) else [float(s) for s in scaling]
    if len(values) != n:
        raise ValueError(f"got {len(values)} scaling(s) for {n} client state(s)")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"LoRA scaling (alpha/r) must be finite and positive, got {values}")
    return values


def _out_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    return functools.reduce(torch.promote_types, (t.dtype for t in tensors))


def _plain_mean(states: Sequence[State], weights: torch.Tensor, names: Sequence[str]) -> Delta:
    if not names:
        return {}
    return weighted_mean([{k: s[k] for k in names} for s in states], weights)


# --- dense ΔW -----------------------------------------------------------------------------------


def dense_delta(state: State, scaling: float) -> dict[str, torch.Tensor]:
    """ΔW = s·B@A per module, shape (out, in) (nn.Linear layout; embedding/Conv1D weights are its transpose)."""
    (s,) = _scalings(scaling, 1)
    out = {}
    for module, (a_key, b_key) in lora_modules(state).items():
        _shapes(state, a_key, b_key, 0)
        a, b = state[a_key], state[b_key]
        compute = torch.promote_types(_out_dtype([a, b]), torch.float32)
        out[module] = (s * (b.to(compute) @ a.to(compute))).to(_out_dtype([a, b]))
    return out


def dense_mean(
    states: Sequence[State], weights: Weights, scaling: float | Sequence[float]
) -> dict[str, torch.Tensor]:
    """Exact product-space mean Σ_i w_i s_i B_i A_i / Σ_i w_i per module, dense (out, in)."""
    w, modules = _check_states(states, weights)
    s = _scalings(scaling, len(states))
    out = {}
    for module, (a_key, b_key) in modules.items():
        tensors = [t for st in states for t in (st[a_key], st[b_key])]
        compute = torch.promote_types(_out_dtype(tensors), torch.float32)
        device = states[0][a_key].device
        acc = None
        for i, st in enumerate(states):
            term = (float(w[i]) * s[i]) * (st[b_key].to(device, compute) @ st[a_key].to(device, compute))
            acc = term if acc is None else acc + term
        out[module] = acc.to(_out_dtype(tensors))
    return out


# --- product-space mean, re-factorised ---------------------------------------------------------


def low_rank_factors(
    b_cat: torch.Tensor, a_cat: torch.Tensor, rank: int, scaling: float, split: Split = "orthonormal_a"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best rank-`rank` (A: (rank, in), B: (out, rank)) with scaling·B@A ≈ b_cat@a_cat; also all singular values.

    b_cat: (out, R), a_cat: (R, in). Thin QR of both sides reduces the SVD of the (out, in) product to
    an SVD of an R×R core, so the cost is O((out+in)·R²) rather than a dense out×in SVD. Truncation is
    optimal in Frobenius and spectral norm (Eckart–Young). If `rank` exceeds the k = min(out, in, R)
    directions the SVD yields, B gets zero columns; A gets orthonormal complement rows with the
    "orthonormal_a" split (while rank ≤ in) and zero rows otherwise (those directions then get no gradient).
    """
    if rank < 1:
        raise ValueError(f"target LoRA rank must be >= 1, got {rank}")
    q_b, r_b = torch.linalg.qr(b_cat)  # (out, k1), (k1, R)
    q_a, r_a = torch.linalg.qr(a_cat.T)  # (in, k2), (k2, R)
    u, sigma, vh = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)
    u, v = q_b @ u, q_a @ vh.T  # (out, k), (in, k): orthonormal columns
    keep = min(rank, sigma.numel())
    sig = sigma[:keep]
    if split == "orthonormal_a":
        # A with orthonormal rows and B carrying σ: zero-σ directions leave B's column 0 but A's row
        # non-zero, which is LoRA's own init (B=0, A≠0), so further local training can still use them.
        a = v[:, :keep].T
        b = u[:, :keep] * (sig / scaling)
    elif split == "balanced":
        root = (sig / scaling).sqrt()
        a = (v[:, :keep] * root).T
        b = u[:, :keep] * root
    else:
        raise ValueError(f"unknown split {split!r}; use 'orthonormal_a' or 'balanced'")
    if rank > keep:
        extra_a = a.new_zeros(rank - keep, a.shape[1])
        if split == "orthonormal_a" and rank <= a.shape[1]:
            # Fill A with an orthonormal complement (B stays 0 there, so s·BA is unchanged) rather
            # than zeros: a direction with both factors 0 gets no gradient and could never be trained.
            complete, _ = torch.linalg.qr(v[:, :keep], mode="complete")
            extra_a = complete[:, keep:rank].T
        a = torch.cat([a, extra_a], dim=0)
        b = torch.cat([b, b.new_zeros(b.shape[0], rank - keep)], dim=1)
    return a, b, sigma


def product_space_mean(
    states: Sequence[State],
    weights: Weights,
    scaling: float | Sequence[float],
    rank: int | None = None,
    out_scaling: float | None = None,
    split: Split = "orthonormal_a",
    residuals: dict[str, float] | None = None,
) -> Delta:
    """Exact weighted mean of ΔW_i = s_i·B_i A_i per module, re-factorised to rank `rank` by truncated SVD.

    scaling: s_i = alpha/r of the clients (one value, or one per client). rank: output rank (default:
    the largest client rank of that module); rank ≥ Σ_i r_i makes the result exact, lower ranks give
    the best rank-`rank` approximation. out_scaling: the s of the model that will load the result
    (default: the clients' common s; required when theirs differ; pass alpha/rank when rank changes s).
    If `residuals` is a dict, it receives per module the relative Frobenius error ‖mean − s·BA‖/‖mean‖.
    Non-LoRA keys are averaged by example count.
    """
    w, modules = _check_states(states, weights)
    s = _scalings(scaling, len(states))
    if out_scaling is None:
        if len(set(s)) > 1:
            raise ValueError(f"clients use different scalings {s}; pass out_scaling for the merged adapter")
        out_scaling = s[0]
    (out_s,) = _scalings(out_scaling, 1)
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be a positive int or None, got {rank!r}")

    factor_keys = {k for pair in modules.values() for k in pair}
    out = _plain_mean(states, w, [k for k in states[0] if k not in factor_keys])
    for module, (a_key, b_key) in modules.items():
        tensors = [t for st in states for t in (st[a_key], st[b_key])]
        out_dtype = _out_dtype(tensors)
        compute = torch.promote_types(out_dtype, torch.float64)  # QR/SVD of a tiny core: exactness is cheap
        device = states[0][a_key].device
        # Σ_i w_i s_i B_i A_i = [w_1 s_1 B_1 | … | w_n s_n B_n] @ [A_1; …; A_n]
        b_cat = torch.cat(
            [(float(w[i]) * s[i]) * st[b_key].to(device, compute) for i, st in enumerate(states)], dim=1
        )
        a_cat = torch.cat([st[a_key].to(device, compute) for st in states], dim=0)
        target = rank if rank is not None else max(st[a_key].shape[0] for st in states)
        a, b, sigma = low_rank_factors(b_cat, a_cat, target, out_s, split)
        out[a_key], out[b_key] = a.to(out_dtype), b.to(out_dtype)
        if residuals is not None:
            total = float(sigma.pow(2).sum())
            dropped = float(sigma[target:].pow(2).sum())
            residuals[module] = math.sqrt(dropped / total) if total > 0 else 0.0
    return {k: out[k] for k in states[0]}


# --- FFA-LoRA and the naive baseline -----------------------------------------------------------


def ffa_mean(states: Sequence[State], weights: Weights, atol: float = 0.0) -> Delta:
    """FFA-LoRA: check every client's A is the same frozen A, then average B by example count; exact.

    Exact because s·mean(B_i)·A = mean(s·B_i·A) when A is shared. atol=0 demands bit-identical A.
    """
    w = check_deltas(states, weights)
    modules = lora_modules(states[0])
    if not modules:
        raise ValueError("no LoRA factors (keys with .lora_A / .lora_B) in client 0's state")
    for a_key, _ in modules.values():
        a0 = states[0][a_key]
        for i, st in enumerate(states[1:], start=1):
            ai = st[a_key].to(a0.device)
            same = torch.equal(ai, a0) if atol == 0 else torch.allclose(ai, a0, rtol=0.0, atol=atol)
            if not same:
                diff = float((ai.double() - a0.double()).abs().max())
                raise ValueError(
                    f"FFA-LoRA needs one frozen A shared by all clients, but client {i} {a_key!r} differs "
                    f"from client 0's (max |dA| = {diff:.3g}); use product_space_mean for trainable A"
                )
    out = weighted_mean(states, w)
    for a_key, _ in modules.values():
        out[a_key] = states[0][a_key].clone()  # the shared A itself, not a rounded mean of copies
    return out


def naive_factor_mean(states: Sequence[State], weights: Weights) -> Delta:
    """Average A and B separately (FedAvg on factors). INEXACT: mean(B)·mean(A) ≠ mean(B·A); for comparison only."""
    return weighted_mean(states, weights)
