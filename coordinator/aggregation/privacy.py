"""Differential privacy for Offsite rounds: Flower's fixed-clipping DP wrappers and its RDP accountant.

Flower's `DifferentialPrivacy{Server,Client}SideFixedClipping` wrap a strategy whose replies hold
full parameters in one ArrayRecord. Offsite replies hold codec-encoded deltas, so the coordinator
first decodes and validates them (names, shapes, finite values, norm bound), then hands the wrapper
one *plain* reply per client: `previous + delta` on the trained tensors, weight 1 (the accounted
path needs a uniform mean). The wrapper's inner strategy is a stock `FedAvg` (its
`aggregate_train` untouched, as accounting requires) whose `configure_train` just relays the
messages Offsite built. So Flower does the clipping (server mode), the mean, the Gaussian noise
(std = z·C/n on the mean) and the accounting (`RdpAccountant`, no sampling amplification).

Client mode: sites clip their own delta to `dp-clip-norm` (client.privacy, Flower's clipping
helper); the coordinator checks the bound on every decoded update, then the client-side wrapper
averages and adds the noise. Either way the coordinator sees the clipped individual updates; only
secure aggregation would hide them (docs/security.md).
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid, NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
)

from coordinator.aggregation.robust import plain_replies
from coordinator.config import FederationConfig
from protocols.records import from_float32_record, to_float32_record
from protocols.schema import ProtocolError
from protocols.seeds import dp_noise_seed

log = logging.getLogger("offsite.coordinator")

# fp16 upload rounding may lift a clipped update's norm a hair above the bound; more is a violation.
CLIENT_CLIP_TOLERANCE = 1e-2


class _Relay(FedAvg):
    """A stock FedAvg whose `configure_train` returns the messages Offsite already built."""

    def __init__(self) -> None:
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0)
        self.pending: list[Message] = []

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        """The relayed messages, unchanged."""
        return list(self.pending)


def make_accountant(cfg: FederationConfig) -> RdpAccountant:
    """Flower's RDP accountant for one run: dp-delta, dp-max-epsilon, no sampling amplification."""
    return RdpAccountant(
        PrivacyConfig(
            target_delta=cfg.dp_delta,
            population_size=cfg.clients_per_round,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
            max_epsilon=cfg.dp_max_epsilon or None,
        )
    )


def privacy_spent(cfg: FederationConfig, accountant: RdpAccountant) -> dict:
    """ε so far at dp-delta, and the settings it follows from (the report's and the lineage's form)."""
    spent = accountant.get_privacy_spent()
    epsilon = spent.epsilon if spent.num_releases else 0.0
    return {
        "mode": cfg.dp,
        "epsilon": float(epsilon) if math.isfinite(epsilon) else float("inf"),
        "delta": spent.delta,
        "releases": spent.num_releases,
        "noise_multiplier": cfg.dp_noise_multiplier,
        "clip_norm": cfg.dp_clip_norm,
        "accountant": "flwr RdpAccountant (dp-accounting), no sampling amplification",
    }


class CentralDP:
    """One run's DP: Flower's fixed-clipping wrapper (server or client clipping) plus its accountant."""

    def __init__(self, cfg: FederationConfig):
        self.cfg = cfg
        self.accountant = make_accountant(cfg)
        wrapper = (
            DifferentialPrivacyServerSideFixedClipping
            if cfg.dp == "server"
            else DifferentialPrivacyClientSideFixedClipping
        )
        self.relay = _Relay()
        self.wrapper = wrapper(
            self.relay,
            cfg.dp_noise_multiplier,
            cfg.dp_clip_norm,
            cfg.clients_per_round,
            accountant=self.accountant,
        )
        self.names: list[str] = []

    def configure(
        self,
        server_round: int,
        previous: dict[str, torch.Tensor],
        names: list[str],
        messages: list[Message],
        grid: Grid,
    ) -> list[Message]:
        """Pass the round's messages through the wrapper (it notes the release it will account for)."""
        self.names = sorted(names)
        self.relay.pending = messages
        if messages:
            self.wrapper.num_sampled_clients = len(messages)  # noise std z·C/n for the n actually asked
        return list(
            self.wrapper.configure_train(
                server_round, to_float32_record(previous, self.names), ConfigRecord(), grid
            )
        )

    def check_client_clipped(self, delta: dict[str, torch.Tensor], norm: float) -> dict[str, torch.Tensor]:
        """Client mode: refuse an update above dp-clip-norm; pull one within fp16 rounding back onto it."""
        bound = self.cfg.dp_clip_norm
        if self.cfg.dp != "client" or norm <= bound:
            return delta
        if norm > bound * (1 + CLIENT_CLIP_TOLERANCE):
            raise ProtocolError(f"update norm {norm:.4g} exceeds dp-clip-norm {bound}: the site did not clip")
        return {k: t * (bound / norm) for k, t in delta.items()}

    def aggregate(
        self, server_round: int, previous: dict[str, torch.Tensor], deltas: list[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor] | None:
        """`previous` + noised mean of the clipped deltas, or None (the wrapper refused the round)."""
        replies = plain_replies(previous, deltas, [1.0] * len(deltas))
        # Flower draws the noise from numpy's global generator: seed it from the run seed for this
        # round only, so a run is reproducible and nothing else's random stream moves.
        saved = np.random.get_state()
        np.random.seed(dp_noise_seed(self.cfg.seed, server_round))
        try:
            arrays, _ = self.wrapper.aggregate_train(server_round, replies)
        finally:
            np.random.set_state(saved)
        if arrays is None:
            log.warning("round %d: the DP wrapper released nothing (a sampled site's update is missing)",
                        server_round)  # fmt: skip
            return None
        return {**previous, **from_float32_record(arrays)}

    def skip(self, server_round: int) -> None:
        """Forget a configured round that released nothing (no privacy spent on it)."""
        self.wrapper._pending_events.pop(server_round, None)

    def spent(self) -> dict:
        """ε so far at dp-delta, and the settings it follows from."""
        return privacy_spent(self.cfg, self.accountant)

    def state_json(self) -> str:
        """The accountant's state as JSON, for checkpoints."""
        return json.dumps(self.accountant.state_dict())

    def load_state_json(self, text: str) -> None:
        """Restore what state_json saved (resume keeps the privacy spent so far)."""
        self.accountant.load_state_dict(json.loads(text))
