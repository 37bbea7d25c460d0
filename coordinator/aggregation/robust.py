"""Byzantine-robust merges of adapter deltas with Flower's own FedMedian, FedTrimmedAvg and Krum.

Offsite replies carry codec-encoded deltas, while Flower's strategies aggregate replies whose single
ArrayRecord holds full parameters. `plain_replies` bridges the two: after the coordinator has
decoded and validated each delta, it builds one plain reply per client holding
`previous + delta` (float32, trained tensors only) and a MetricRecord with `num-examples`. Flower's
strategy aggregates those exactly as it would aggregate full models, and the merged delta is its
result minus `previous`.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from flwr.app import Message, MessageType, MetricRecord, RecordDict
from flwr.app.metadata import Metadata
from flwr.serverapp.strategy import FedMedian, FedTrimmedAvg, Krum, Strategy

from protocols import schema as S
from protocols.records import from_float32_record, to_float32_record


def plain_reply(arrays: dict[str, np.ndarray], weight: float, node: int = 0) -> Message:
    """A train reply as Flower's built-in strategies expect it: one ArrayRecord, one MetricRecord."""
    # Message(content, dst, type) needs a runtime TaskIdentity; build the metadata directly instead.
    meta = Metadata(0, "", node, 0, "", "", time.time(), 3600.0, MessageType.TRAIN)
    record = to_float32_record(arrays)
    content = RecordDict({"arrays": record, "metrics": MetricRecord({S.NUM_EXAMPLES: weight})})
    return Message(content=content, metadata=meta)


def plain_replies(
    previous: dict[str, torch.Tensor], deltas: list[dict[str, torch.Tensor]], weights: list[float]
) -> list[Message]:
    """One plain reply per client: `previous + delta` on the delta's tensors, weighted by `weights`."""
    return [
        plain_reply({k: (previous[k] + d[k].float()).numpy() for k in sorted(d)}, w, node=i + 1)
        for i, (d, w) in enumerate(zip(deltas, weights, strict=True))
    ]


def _merged_delta(
    strategy: Strategy,
    previous: dict[str, torch.Tensor],
    deltas: list[dict[str, torch.Tensor]],
    weights: list[float],
    server_round: int,
) -> dict[str, torch.Tensor]:
    """The merged delta (trained tensors only) that Flower's `strategy` picks from the clients'."""
    arrays, _ = strategy.aggregate_train(server_round, plain_replies(previous, deltas, weights))
    if arrays is None:
        raise ValueError(f"{type(strategy).__name__} returned no aggregate")
    return {k: v - previous[k] for k, v in from_float32_record(arrays).items()}


def fedmedian(previous, deltas, weights, server_round: int) -> dict[str, torch.Tensor]:
    """Coordinate-wise median of the clients' updates (Flower's FedMedian)."""
    return _merged_delta(FedMedian(), previous, deltas, weights, server_round)


def fedtrimmedavg(previous, deltas, weights, server_round: int, beta: float) -> dict[str, torch.Tensor]:
    """Mean after trimming the `beta` share of extremes per coordinate (Flower's FedTrimmedAvg)."""
    return _merged_delta(FedTrimmedAvg(beta=beta), previous, deltas, weights, server_round)


def krum(previous, deltas, weights, server_round: int, num_malicious_nodes: int) -> dict[str, torch.Tensor]:
    """The one update closest to its neighbours, tolerating `num_malicious_nodes` (Flower's Krum)."""
    return _merged_delta(
        Krum(num_malicious_nodes=num_malicious_nodes), previous, deltas, weights, server_round
    )
