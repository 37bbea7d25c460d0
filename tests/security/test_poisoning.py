"""Poisoning: the ClientApp's attack test switch, and oversized updates dropped before they are decoded
(the accuracy figures under each aggregator are bench/poisoning.py's)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, Context, Message, RecordDict

from client.round_step import TEST_ATTACK_KEY, apply_test_attack
from protocols import codecs
from protocols import schema as S

from .harness import run, statuses
from .poison import malicious_sites


def _context(**node_config) -> Context:
    return Context(1, 7, node_config, RecordDict(), {})


def test_attack_switch_is_off_by_default_and_flips_or_scales_the_delta():
    delta = {"blocks.0.w": torch.tensor([1.0, -2.0]), "blocks.1.b": torch.tensor([0.5])}
    assert apply_test_attack(_context(), delta) is delta  # absent: off
    assert apply_test_attack(_context(**{TEST_ATTACK_KEY: "none"}), delta) is delta
    flipped = apply_test_attack(_context(**{TEST_ATTACK_KEY: "sign-flip"}), delta)
    assert all(torch.equal(flipped[k], -delta[k]) for k in delta)
    scaled = apply_test_attack(_context(**{TEST_ATTACK_KEY: "scale10"}), delta)
    assert all(torch.equal(scaled[k], 10 * delta[k]) for k in delta)
    with pytest.raises(ValueError, match="test-attack must be one of none, sign-flip, scale10"):
        apply_test_attack(_context(**{TEST_ATTACK_KEY: "scale100"}), delta)


def test_attack_switch_acts_on_what_the_site_sends(quick_run, tmp_path):
    overrides = {**quick_run, "clients-per-round": 2, "partitioning": "iid"}
    honest, _ = run({**overrides, "run-name": "honest"}, tmp_path / "a", n=2)
    node_extra = {TEST_ATTACK_KEY: "scale10"}
    attacked, _ = run({**overrides, "run-name": "scaled"}, tmp_path / "b", n=2, node_extra=node_extra)
    norms = [{c["node"]: c["update-norm"] for c in r["rounds"][0]["clients"]} for r in (honest, attacked)]
    for node in norms[0]:  # same seeds and data: the sent update is exactly ten times the honest one
        assert norms[1][node] == pytest.approx(10 * norms[0][node], rel=1e-2)


def _wire(reply: Message):
    return reply.content[S.ADAPTER_RECORD]


def padded_update(reply: Message) -> None:
    """One tensor sent with a whole adapter's worth of extra values."""
    record = _wire(reply)
    total = sum(math.prod(a.shape) for a in record.values())
    name = sorted(record)[0]
    values = record[name].numpy().reshape(-1)
    record[name] = Array(np.concatenate([values, np.zeros(total, dtype=values.dtype)]))


def extra_array_update(reply: Message) -> None:
    """A tensor the adapter does not have, as large as the adapter."""
    record = _wire(reply)
    total = sum(math.prod(a.shape) for a in record.values())
    record["blocks.99.smuggled"] = Array(np.zeros(total, dtype=np.float16))


def wide_update(reply: Message) -> None:
    """The right number of values, in float64: four times the bytes of fp16."""
    record = _wire(reply)
    for name in sorted(record):
        record[name] = Array(np.asarray(record[name].numpy(), dtype=np.float64))


OVERSIZED = {1: padded_update, 2: extra_array_update, 3: wide_update}


def test_oversized_updates_are_dropped_before_they_are_decoded(quick_run, tmp_path, monkeypatch):
    decoded: list[int] = []  # values of every update that reached the decoder
    real = codecs.from_records

    def spy(arrays, meta):
        decoded.append(sum(math.prod(a.shape) for a in arrays.values()))
        return real(arrays, meta)

    monkeypatch.setattr(codecs, "from_records", spy)
    report, _ = run({**quick_run, "clients-per-round": 4}, tmp_path, n=4, client=malicious_sites(OVERSIZED))
    rows = statuses(report)
    assert rows[1000][0] == "ok"
    for i in OVERSIZED:
        status, reason = rows[1000 + i]
        assert status == "dropped" and reason.startswith("oversized update"), (i, reason)
    assert len(decoded) == 1  # only the honest update was decoded
    assert report["rounds"][0]["rejected"] == 3 and report["rounds"][0]["updated"]
