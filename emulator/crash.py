"""CRaSh: cluster blocks by representation similarity, remove all but one per cluster, share it.

Also the Offsite-Tuning uniform rule, so both emulator layouts come from one place.
A *layout* is a list with one entry per emulator position: the full-model block index it runs.
"""

from __future__ import annotations

import torch
from torch import nn


def uniform_keep(middle: list[int], k: int) -> list[int]:
    """Offsite-Tuning's rule: keep k of the middle blocks at round(i·(|M|−1)/(k−1)), i=0..k−1."""
    m = len(middle)
    if not 1 <= k <= m:
        raise ValueError(f"cannot keep {k} of {m} middle blocks")
    if k == 1:
        return [middle[(m - 1) // 2]]
    return [middle[round(i * (m - 1) / (k - 1))] for i in range(k)]


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between two (n, d) feature matrices; 1.0 means identical up to rotation/scale."""
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    hsic = (y.T @ x).pow(2).sum()
    norm = (x.T @ x).pow(2).sum().sqrt() * (y.T @ y).pow(2).sum().sqrt()
    return float(hsic / norm) if norm > 0 else 0.0


def cka_matrix(features: list[torch.Tensor]) -> torch.Tensor:
    """Pairwise linear CKA of per-block features; returns (L, L)."""
    n = len(features)
    out = torch.eye(n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = linear_cka(features[i], features[j])
    return out


@torch.no_grad()
def block_features(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch: int = 16
) -> list[torch.Tensor]:
    """Each block's output pooled over tokens by a position-weighted mean (padding masked): L × (n, d).

    Later positions weigh more (weight = position + 1) because in a causal LM they have seen
    more context, which is where blocks differ.
    """
    model.eval()
    pooled: list[list[torch.Tensor]] = []
    for start in range(0, len(input_ids), batch):
        ids, mask = input_ids[start : start + batch], attention_mask[start : start + batch]
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        pos = torch.arange(1, ids.shape[1] + 1, dtype=torch.float32).unsqueeze(0)
        w = (pos * mask.float()).unsqueeze(-1)
        hs = out.hidden_states[1:]  # hidden_states[0] is the embedding output
        if not pooled:
            pooled = [[] for _ in hs]
        for i, h in enumerate(hs):
            h = h.float().flatten(2)  # hyper-connection models carry (batch, seq, copies, hidden)
            pooled[i].append((h * w).sum(1) / w.sum(1).clamp_min(1e-6))
    return [torch.cat(p) for p in pooled]


def adjacent_clusters(sim: torch.Tensor, k: int) -> list[list[int]]:
    """Merge adjacent clusters whose touching blocks are most similar until k remain.

    `sim` is (n, n) over the blocks being clustered, in order. Returns k contiguous index lists.
    """
    n = sim.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"cannot form {k} clusters from {n} blocks")
    clusters = [[i] for i in range(n)]
    while len(clusters) > k:
        scores = [float(sim[clusters[i][-1], clusters[i + 1][0]]) for i in range(len(clusters) - 1)]
        # Ties go to the earliest pair, so the result is deterministic.
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))
        clusters[best] = clusters[best] + clusters.pop(best + 1)
    return clusters


def balanced_cap(n: int, k: int) -> int:
    """The size bound of 'balanced' clustering: ceil(n / k), the smallest that still allows k clusters."""
    return -(-n // k)


def bounded_clusters(sim: torch.Tensor, k: int, max_size: int) -> list[list[int]]:
    """k contiguous clusters of at most max_size blocks, cut where touching blocks are least similar.

    Adjacent merging amounts to cutting the k−1 boundaries of lowest touching-block CKA; this
    picks the cuts of least total CKA subject to the bound (exact, by dynamic programming). The
    bound keeps one cluster from swallowing a long plateau of similar blocks, which sharing would
    then run as one block many times in a row.
    """
    n = sim.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"cannot form {k} clusters from {n} blocks")
    if k * max_size < n:
        raise ValueError(f"{k} clusters of at most {max_size} blocks cannot cover {n} blocks")
    cut = [float(sim[i, i + 1]) for i in range(n - 1)] + [0.0]  # no cost after the last block
    inf = float("inf")
    # best[c][j] = (least cut cost splitting blocks[:j] into c clusters, start of the last cluster)
    best = [[(inf, -1)] * (n + 1) for _ in range(k + 1)]
    best[0][0] = (0.0, -1)
    for c in range(1, k + 1):
        for j in range(c, n + 1):
            for i in range(max(c - 1, j - max_size), j):
                cost = best[c - 1][i][0] + cut[j - 1]
                if cost < best[c][j][0]:  # strict: ties keep the earliest start, so it is deterministic
                    best[c][j] = (cost, i)
    clusters, j = [], n
    for c in range(k, 0, -1):
        i = best[c][j][1]
        clusters.append(list(range(i, j)))
        j = i
    return clusters[::-1]


def share_repeats(share: str) -> int | None:
    """How often sharing runs each representative: None for 'full' (its whole cluster), 1 for 'none', r for 'partial:r'."""
    if share == "full":
        return None
    if share == "none":
        return 1
    kind, _, r = share.partition(":")
    if kind != "partial" or not r.isdigit() or int(r) < 1:
        raise ValueError(f"unknown sharing mode {share!r}; write full, none or partial:R (R ≥ 1)")
    return int(r)


def representative(cluster: list[int]) -> int:
    """The middle member of a cluster (the lower middle for even sizes)."""
    return cluster[(len(cluster) - 1) // 2]


def shared_layout(clusters: list[list[int]], offset: int = 0, repeats: int | None = None) -> list[int]:
    """Refill each cluster's positions with its representative (weight-tied), at most `repeats` times each."""
    return [representative(c) + offset for c in clusters for _ in c[:repeats]]


def spread_pick(items: list[int], n: int) -> list[int]:
    """Pick n items evenly spread over a list, always including both ends when n ≥ 2."""
    if n > len(items):
        raise ValueError(f"cannot pick {n} of {len(items)}")
    if n == 0:
        return []
    return uniform_keep(items, n)
