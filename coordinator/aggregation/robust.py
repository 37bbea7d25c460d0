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


def robust_strategy(name: str, trimmed_beta: float = 0.2, krum_malicious: int = 1) -> Strategy:
    """Flower's strategy for a robust `aggregator` name (fedmedian, fedtrimmedavg, krum)."""
    if name == "fedmedian":
        return FedMedian()
    if name == "fedtrimmedavg":
        return FedTrimmedAvg(beta=trimmed_beta)
    if name == "krum":
        return Krum(num_malicious_nodes=krum_malicious)
    raise ValueError(f"unknown robust aggregator {name!r}")


def robust_merge(
    name: str,
    previous: dict[str, torch.Tensor],
    deltas: list[dict[str, torch.Tensor]],
    weights: list[float],
    server_round: int,
    **params,
) -> dict[str, torch.Tensor]:
    """The merged delta (trained tensors only) that Flower's robust strategy picks from the clients'."""
    strategy = robust_strategy(name, **params)
    arrays, _ = strategy.aggregate_train(server_round, plain_replies(previous, deltas, weights))
    if arrays is None:
        raise ValueError(f"{name} returned no aggregate")
    return {k: v - previous[k] for k, v in from_float32_record(arrays).items()}
