"""Malicious sites: the real ClientApp's reply, altered before it leaves the site."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from flwr.app import Array, Context, Message

from client.client_app import app as client_app
from protocols import codecs
from protocols import schema as S

Edit = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def _delta(reply: Message) -> dict[str, torch.Tensor]:
    content = reply.content
    encoded = codecs.from_records(content[S.ADAPTER_RECORD], content[S.UPDATE_META_RECORD])
    return codecs.decode(encoded)


def _reencode(reply: Message, delta: dict[str, torch.Tensor]) -> None:
    arrays, meta = codecs.to_records(codecs.encode(delta, "fp16"))
    reply.content[S.ADAPTER_RECORD] = arrays
    reply.content[S.UPDATE_META_RECORD] = meta


def nan_update(reply: Message) -> None:
    """One NaN in the wire tensor (a sane encoder refuses NaN, so it is put on the wire directly)."""
    record = reply.content[S.ADAPTER_RECORD]
    name = sorted(record)[0]
    bad = np.array(record[name].numpy(), copy=True)
    bad.reshape(-1)[0] = np.nan
    record[name] = Array(bad)


def wrong_shape_update(reply: Message) -> None:
    """One matrix flattened: same values, a shape the adapter does not have."""
    delta = _delta(reply)
    name = next(k for k in sorted(delta) if delta[k].dim() >= 2)
    delta[name] = delta[name].reshape(-1)
    _reencode(reply, delta)


def wrong_dtype_update(reply: Message) -> None:
    """One fp16 wire tensor sent as fp32."""
    record = reply.content[S.ADAPTER_RECORD]
    name = sorted(record)[0]
    record[name] = Array(np.asarray(record[name].numpy(), dtype=np.float32))


def scaled_update(factor: float) -> Callable[[Message], None]:
    """The honest delta times `factor` (factor -50: a sign-flipping, boosting Byzantine site)."""

    def edit(reply: Message) -> None:
        _reencode(reply, {k: v * factor for k, v in _delta(reply).items()})

    return edit


def norm_update(norm: float) -> Callable[[Message], None]:
    """The honest delta rescaled to global L2 norm `norm` (an oversized update)."""

    def edit(reply: Message) -> None:
        delta = _delta(reply)
        now = float(torch.sqrt(sum(v.double().pow(2).sum() for v in delta.values())))
        _reencode(reply, {k: v * (norm / now) for k, v in delta.items()})

    return edit


def malicious_sites(edits: dict[int, Callable[[Message], None]]):
    """A ClientApp callable: partition i's train replies go through `edits[i]`, the rest are honest."""

    def app(message: Message, context: Context) -> Message:
        reply = client_app(message, context)
        edit = edits.get(int(context.node_config["partition-id"]))
        if edit is not None and message.metadata.message_type == "train":
            edit(reply)
        return reply

    return app
