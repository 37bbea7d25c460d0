"""Offsite strategies: Flower's FedAvg/FedAdam/FedYogi with per-node messages and delta updates.

`OffsiteStrategy` is a mixin put in front of a `flwr.serverapp.strategy` class:
- `configure_train` samples nodes (seeded, with a timeout instead of Flower's endless wait), asks
  the ones not known to hold the stand-in whether they do, and builds one message per node: the
  signed fp16 global adapter, plus the signed stand-in only for nodes that lack it.
- `aggregate_train` validates every reply against the schema, decodes its adapter delta, drops
  bad updates (logged, the round goes on), merges the rest (FedAvg/TIES/DARE on whole blocks,
  FFA-LoRA or product-space LoRA), and hands `previous + merged delta` to the parent class as a
  single synthetic reply, so FedAvg returns it as is and FedAdam/FedYogi apply their server step.
Per-node bytes and metrics of each round are kept in `round_log` for the report.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.app.metadata import Metadata
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedYogi

from coordinator.aggregation import registry
from coordinator.aggregation.privacy import CentralDP
from coordinator.config import FederationConfig
from coordinator.federation.standin.bundle import StandIn, sign
from emulator.plugin import trained_adapter_names
from protocols import codecs
from protocols import schema as S
from protocols.hashing import hash_state_dict
from protocols.records import content_nbytes, from_float32_record, record_sha256, to_float32_record
from protocols.seeds import sample_nodes
from protocols.signing import SignatureError
from protocols.site_signing import load_site_keys, update_sha256, verify_update
from protocols.tensors import state_dict_to_array_record

log = logging.getLogger("offsite.coordinator")


SETTLE_S = 10.0  # seconds an unchanged node count ends the wait for more nodes

# The most each codec may put on the wire for an adapter of n values, checked before anything is
# decoded: (arrays per tensor, values per adapter value, bytes per adapter value). fp16, DARE and
# int8 send at most one value per adapter value, top-k a value and an index. Bytes allow 4 per value
# (the adapter's fp32 size; top-k: plus an int64 index), so a wrong but small dtype still gets the
# decoder's own message. An unknown codec gets the loosest bound and is refused by the decoder.
WIRE_LIMITS: dict[str, tuple[int, int, int]] = {
    "fp16": (1, 1, 4),
    "dare": (1, 1, 4),
    "int8": (1, 1, 4),
    "topk": (2, 2, 12),
}
WIRE_ARRAY_OVERHEAD = 4096  # bytes per wire array beyond its values: name and serialisation header


class NoNodesError(RuntimeError):
    """Not enough nodes connected within the node timeout."""


@dataclass
class RoundLog:
    """What happened in one round, per node."""

    server_round: int
    sent: dict[int, dict] = field(default_factory=dict)
    replies: dict[int, dict] = field(default_factory=dict)
    dropped: dict[int, str] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    query_seconds: float = 0.0
    evaluate: dict[int, dict] = field(default_factory=dict)
    # (node, SHA-256 of the decoded delta, num-examples, signing site key id or None) of each update
    # merged: the lineage record
    merged: list[tuple[int, str, float, str | None]] = field(default_factory=list)

    def clients(self) -> list[dict]:
        """One row per node the round addressed: bytes both ways, stand-in sent, metrics, outcome."""
        rows = []
        for node, sent in sorted(self.sent.items()):
            reply = self.replies.get(node, {})
            status = (
                "ok" if node in self.replies
                else "dropped" if node in self.dropped
                else "failed" if node in self.failed
                else "timeout"
            )  # fmt: skip
            rows.append(
                {
                    "node": node,
                    "status": status,
                    "reason": self.dropped.get(node) or self.failed.get(node) or "",
                    "standin_sent": sent["standin"],
                    "bytes_down": sent["bytes"],
                    "bytes_up": reply.get("bytes", 0),
                    **reply.get("metrics", {}),
                }
            )
        return rows


def _synthetic_reply(arrays: ArrayRecord) -> Message:
    # A reply built from metadata directly: Message(content, dst, type) needs a runtime TaskIdentity.
    meta = Metadata(0, "", 0, 0, "", "", time.time(), 3600.0, MessageType.TRAIN)
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord({S.NUM_EXAMPLES: 1})})
    return Message(content=content, metadata=meta)


class OffsiteStrategy:
    """Mixin: use as `class X(OffsiteStrategy, FedAvg)`; see the module docstring."""

    def __init__(
        self,
        cfg: FederationConfig,
        standin: StandIn,
        key: Ed25519PrivateKey,
        template: dict[str, torch.Tensor],
        run_id: str = "",
        **flwr_kwargs,
    ):
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=1.0,
            min_train_nodes=cfg.min_clients,
            min_evaluate_nodes=1,
            min_available_nodes=cfg.min_clients,
            **flwr_kwargs,
        )
        self.cfg = cfg
        self.standin = standin
        self.key = key
        self.shapes = {k: tuple(v.shape) for k, v in template.items()}
        self.holders: set[int] = set()
        self.round_log = RoundLog(0)
        self.last_trained: list[int] = []
        self._prev: dict[str, torch.Tensor] | None = None
        self._outbox: list[Message] = []  # the last batch of messages built, to match replies to
        self.privacy = CentralDP(cfg) if cfg.dp != "none" else None
        self.run_id = run_id  # the nonce sites sign into their update manifests
        self.site_keys = load_site_keys(cfg.site_keys) if cfg.site_keys else None

    # --- nodes ----------------------------------------------------------------------------
    def wait_for_nodes(self, grid: Grid, wanted: int) -> list[int]:
        """Connected node ids: up to node-timeout for `wanted` of them, less once the count settles.

        With at least min-clients connected, a count unchanged for SETTLE_S seconds ends the wait
        (a simulation registers all its nodes at once); fewer than min-clients after node-timeout
        raise NoNodesError. Nodes that join later are sampled in later rounds.
        """
        start = time.monotonic()
        deadline = start + self.cfg.node_timeout
        seen, since = -1, start
        while True:
            nodes = sorted(grid.get_node_ids())
            now = time.monotonic()
            if len(nodes) != seen:
                seen, since = len(nodes), now
            if len(nodes) >= wanted:
                return nodes
            enough = len(nodes) >= self.cfg.min_clients
            if enough and (now - since >= min(SETTLE_S, self.cfg.node_timeout) or now >= deadline):
                log.warning("%d of %d wanted nodes connected; going on with them", len(nodes), wanted)
                return nodes
            if now >= deadline:
                raise NoNodesError(
                    f"{len(nodes)} node(s) connected after {self.cfg.node_timeout:.0f} s; "
                    f"min-clients is {self.cfg.min_clients}"
                )
            log.info("waiting for nodes: %d connected, %d wanted", len(nodes), wanted)
            time.sleep(min(1.0, max(0.05, deadline - now)))

    def select(self, server_round: int, nodes: list[int]) -> list[int]:
        """A seeded sample of clients-per-round nodes (all of them when fewer are connected)."""
        return sample_nodes(self.cfg.seed, server_round, nodes, self.cfg.clients_per_round)

    def query_holders(self, grid: Grid, nodes: list[int]) -> None:
        """Ask nodes not known to hold the stand-in whether they do (no answer in time: no)."""
        unknown = [n for n in nodes if n not in self.holders]
        if not unknown:
            return
        start = time.perf_counter()
        config = ConfigRecord(S.new_config({S.STANDIN_HASH: self.standin.hash}))
        messages = [
            Message(
                RecordDict({S.CONFIG_RECORD: config}), n, MessageType.QUERY, ttl=self.cfg.query_timeout + 30
            )
            for n in unknown
        ]
        for reply in grid.send_and_receive(messages, timeout=self.cfg.query_timeout):
            if reply.has_error():
                continue
            try:
                S.check_message("query-res", reply.content)
                cfg = reply.content.config_records[S.CONFIG_RECORD]
                if cfg[S.STANDIN_HASH] == self.standin.hash and cfg[S.HAS_STANDIN]:
                    self.holders.add(reply.metadata.src_node_id)
            except S.ProtocolError as err:
                log.warning("bad query reply from node %s: %s", reply.metadata.src_node_id, err)
        self.round_log.query_seconds += time.perf_counter() - start
        log.info(
            "stand-in holders among %d queried nodes: %d", len(unknown), len(set(unknown) & self.holders)
        )

    # --- payloads -------------------------------------------------------------------------
    def signed_adapter(self, server_round: int, arrays: ArrayRecord) -> tuple[ArrayRecord, str, bytes]:
        """The fp16 wire copy of `arrays` with its signed manifest (made once per batch of messages)."""
        wire = state_dict_to_array_record(from_float32_record(arrays))
        manifest, signature = sign(self.key, record_sha256(wire), "adapter", self.standin.hash, server_round)
        return wire, manifest, signature

    def _messages(
        self, server_round: int, arrays: ArrayRecord, config: dict, nodes: list[int], message_type: str
    ) -> list[Message]:
        wire, manifest, signature = self.signed_adapter(server_round, arrays)
        base = S.new_config(
            {
                **config,
                S.ROUND: server_round,
                S.STANDIN_HASH: self.standin.hash,
                S.ADAPTER_MANIFEST: manifest,
                S.ADAPTER_SIGNATURE: signature,
            }
        )
        if message_type == MessageType.TRAIN:
            base[S.RUN_ID] = self.run_id
        out = []
        for node in nodes:
            records: dict = {S.ADAPTER_RECORD: wire}
            values = dict(base)
            send_standin = node not in self.holders
            if send_standin:
                records[S.STANDIN_RECORD] = self.standin.record
                values[S.STANDIN_MANIFEST] = self.standin.manifest_json
                values[S.STANDIN_SIGNATURE] = self.standin.signature
            records[S.CONFIG_RECORD] = ConfigRecord(values)
            content = RecordDict(records)
            out.append(Message(content, node, message_type, ttl=self.cfg.round_timeout + 60))
            self.round_log.sent[node] = {"bytes": content_nbytes(content), "standin": send_standin}
        self._outbox = out
        return out

    def reply_node(self, msg: Message) -> int:
        """The node a reply stands for: its sender, or the addressee of the message it answers.

        An error the SuperLink makes on a node's behalf (node unavailable: no heartbeat) comes from
        SUPERLINK_NODE_ID; the grid gave our messages their ids when it pushed them.
        """
        src = msg.metadata.src_node_id
        if src != SUPERLINK_NODE_ID:
            return src
        answered = msg.metadata.reply_to_message_id
        return next((m.metadata.dst_node_id for m in self._outbox if m.metadata.message_id == answered), src)

    # --- training -------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Per-node train messages; the stand-in goes only to nodes that lack it."""
        self.round_log = RoundLog(server_round)
        self._prev = from_float32_record(arrays)
        if hasattr(self, "current_arrays"):  # FedOpt family: the point its server step starts from
            self.current_arrays = {k: v.numpy() for k, v in self._prev.items()}
        nodes = self.select(server_round, self.wait_for_nodes(grid, self.cfg.clients_per_round))
        self.query_holders(grid, nodes)
        messages = self._messages(server_round, arrays, dict(config), nodes, MessageType.TRAIN)
        if self.privacy is not None:  # Flower's DP wrapper notes the release it will account for
            trained = sorted(self._allowed_names()[0])
            messages = self.privacy.configure(server_round, self._prev, trained, messages, grid)
        n_standin = sum(v["standin"] for v in self.round_log.sent.values())
        log.info("round %d: training on %d node(s), stand-in sent to %d", server_round, len(nodes), n_standin)
        return messages

    def _allowed_names(self) -> list[frozenset[str]]:
        names = frozenset(self.shapes)
        if not self.cfg.lora_rank:
            return [names]
        b_only = frozenset(trained_adapter_names(names, self.cfg.lora_rank, train_lora_a=False))
        return [b_only] if self.cfg.lora_aggregation == "ffa" else [names, b_only]

    def check_wire_size(self, content: RecordDict) -> None:
        """Refuse an update with more wire arrays, values or bytes than the adapter allows, before decoding."""
        record = content.array_records[S.ADAPTER_RECORD]
        codec = content.config_records[S.UPDATE_META_RECORD].get(codecs.META_CODEC)
        per_array, per_value, value_bytes = WIRE_LIMITS.get(codec, max(WIRE_LIMITS.values()))
        numel = max(sum(math.prod(self.shapes[k]) for k in names) for names in self._allowed_names())
        tensors = max(len(names) for names in self._allowed_names())
        values = sum(math.prod(a.shape) for a in record.values())
        nbytes = record.count_bytes()
        limit = numel * value_bytes + tensors * per_array * WIRE_ARRAY_OVERHEAD
        if len(record) > tensors * per_array or values > numel * per_value or nbytes > limit:
            raise S.ProtocolError(
                f"oversized update: {len(record)} arrays, {values} values, {nbytes} bytes; the adapter "
                f"allows {tensors * per_array} arrays, {numel * per_value} values, {limit} bytes ({codec})"
            )

    def verify_site(self, content: RecordDict, node: int, signers: set[str]) -> str | None:
        """The registered site key that signed this update (None when site-keys is off); SignatureError else."""
        if self.site_keys is None:
            return None
        signed = content.config_records.get(S.UPDATE_SIGNATURE_RECORD, {})
        kid = verify_update(
            signed.get(S.UPDATE_MANIFEST), signed.get(S.UPDATE_SIGNATURE), self.site_keys, run=self.run_id,
            server_round=self.round_log.server_round, node=node,
            content_sha256=update_sha256(content.array_records[S.ADAPTER_RECORD],
                                         content.config_records[S.UPDATE_META_RECORD]),
            num_examples=content.metric_records[S.METRICS_RECORD][S.NUM_EXAMPLES],
        )  # fmt: skip
        if kid in signers:
            raise SignatureError(f"site key {kid} already signed an update this round")
        signers.add(kid)
        return kid

    def decode_update(
        self, content: RecordDict, node: int, signers: set[str]
    ) -> tuple[dict[str, torch.Tensor], dict, str | None]:
        """Validated (delta, metrics, signing site key) of one train reply; ProtocolError if it is unusable."""
        S.check_message("train-res", content)
        self.check_wire_size(content)  # before the signature check reads the tensors
        site = self.verify_site(content, node, signers)
        encoded = codecs.from_records(
            content.array_records[S.ADAPTER_RECORD], content.config_records[S.UPDATE_META_RECORD]
        )
        try:
            names = frozenset(str(e["name"]) for e in json.loads(str(encoded.meta.get(codecs.META_LAYOUT))))
        except (ValueError, TypeError, KeyError) as err:  # json's and the layout's own shape errors
            raise S.ProtocolError(f"update layout unreadable: {err}") from None
        if names not in self._allowed_names():
            raise S.ProtocolError(f"update names {sorted(names)[:3]}… are not a trainable adapter set")
        delta = codecs.decode(encoded, expected={k: self.shapes[k] for k in names})
        norm = math.sqrt(sum(float(t.double().pow(2).sum()) for t in delta.values()))
        if self.cfg.max_update_norm and norm > self.cfg.max_update_norm:
            raise S.ProtocolError(
                f"update norm {norm:.4g} exceeds max-update-norm {self.cfg.max_update_norm}"
            )
        metrics = dict(content.metric_records[S.METRICS_RECORD])
        if not metrics[S.NUM_EXAMPLES] > 0:
            raise S.ProtocolError("update reports no training examples")
        metrics["update-norm"] = norm
        if self.privacy is not None:
            delta = self.privacy.check_client_clipped(delta, norm)
        return delta, metrics, site

    def merge(self, deltas: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
        """The new global adapter from the previous one and the clients' deltas."""
        prev = self._prev
        if self.cfg.lora_rank:
            states = [{k: prev[k] + d[k] if k in d else prev[k] for k in prev} for d in deltas]
            merge_lora = registry.get(self.cfg.lora_aggregation, "lora").fn
            if self.cfg.lora_aggregation == "ffa":
                return merge_lora(states, weights)
            return merge_lora(states, weights, scaling=2.0, rank=self.cfg.lora_rank)  # add_lora: alpha = 2r
        rnd = self.round_log.server_round
        method = registry.get(self.cfg.aggregator)
        params = method.params_from(self.cfg.to_run_config(), seed=self.cfg.seed + rnd)
        if method.kind == "robust":
            merged = method.fn(prev, deltas, weights, rnd, **params)
            return {k: prev[k] + merged[k] if k in merged else prev[k] for k in prev}
        merged = registry.aggregate(self.cfg.aggregator, deltas, weights, **params)
        return {k: prev[k] + merged[k].float() for k in prev}

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate and merge client deltas; None if fewer than min-clients usable replies."""
        usable, signers = [], set()
        for msg in replies:
            node = self.reply_node(msg)
            if msg.has_error():
                self.round_log.failed[node] = msg.error.reason or f"error {msg.error.code}"
                self.holders.discard(node)  # maybe it lost the stand-in: ask again next time
                log.warning("node %s failed: %s", node, self.round_log.failed[node].strip()[-300:])
                continue
            try:
                delta, metrics, site = self.decode_update(msg.content, node, signers)
            except S.ProtocolError as err:
                self.round_log.dropped[node] = str(err)
                log.warning("dropped the update of node %s: %s", node, err)
                continue
            self.holders.add(node)
            self.round_log.replies[node] = {"bytes": content_nbytes(msg.content), "metrics": metrics}
            usable.append((hash_state_dict(delta), node, delta, metrics, site))
        if len(usable) < self.cfg.min_clients:
            log.warning("round %d: %d usable update(s) < min-clients %d; global adapter unchanged",
                        server_round, len(usable), self.cfg.min_clients)  # fmt: skip
            if self.privacy is not None:
                self.privacy.skip(server_round)
            return None, None
        usable.sort(key=lambda u: u[0])  # an order independent of node ids makes the sum reproducible
        self.last_trained = sorted(u[1] for u in usable)
        weights = [float(u[3][S.NUM_EXAMPLES]) for u in usable]
        if self.privacy is not None:
            candidate = self.privacy.aggregate(server_round, self._prev, [u[2] for u in usable])
            if candidate is None:
                return None, None
        else:
            candidate = self.merge([u[2] for u in usable], weights)
        self.round_log.merged = [(u[1], u[0], w, u[4]) for u, w in zip(usable, weights, strict=True)]
        arrays, _ = super().aggregate_train(server_round, [_synthetic_reply(to_float32_record(candidate))])
        arrays = to_float32_record(from_float32_record(arrays))  # FedAdam/FedYogi steps come back as float64
        return arrays, self._metrics([u[3] for u in usable], weights)

    @staticmethod
    def _metrics(metrics: list[dict], weights: list[float]) -> MetricRecord:
        total = sum(weights)
        out: dict = {"clients": len(metrics), S.NUM_EXAMPLES: int(total)}
        for key in (S.TRAIN_LOSS, S.TRAIN_SECONDS, "update-norm"):
            out[key] = sum(m[key] * w for m, w in zip(metrics, weights, strict=True)) / total
        out[S.MAX_ABS_DELTA] = max(m[S.MAX_ABS_DELTA] for m in metrics)
        out[S.PEAK_MEM_MB] = max(m[S.PEAK_MEM_MB] for m in metrics)
        out[S.BYTES_UP] = int(sum(m[S.BYTES_UP] for m in metrics))
        return MetricRecord(out)

    def _check_and_log_replies(self, replies, is_train, validate=True):
        # Real replies were checked in aggregate_train/aggregate_evaluate; the parent only ever sees
        # the one synthetic reply, whose "Received 1 results" log line would mislead.
        return list(replies), []

    # --- client-side evaluation -----------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Evaluate messages for the nodes that trained this round (stand-in only where lacking)."""
        nodes = [n for n in self.last_trained if n in set(grid.get_node_ids())]
        saved = self.round_log.sent
        self.round_log.sent = {}
        try:
            messages = self._messages(server_round, arrays, dict(config), nodes, MessageType.EVALUATE)
        finally:
            self.round_log.sent = saved
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Example-weighted local accuracy/loss, keeping each node's figures in round_log.evaluate."""
        rows = []
        for msg in replies:
            node = self.reply_node(msg)
            if msg.has_error():
                log.warning("evaluation failed on node %s: %s", node, (msg.error.reason or "").strip()[-300:])
                continue
            try:
                S.check_message("evaluate-res", msg.content)
            except S.ProtocolError as err:
                log.warning("bad evaluate reply from node %s: %s", node, err)
                continue
            m = dict(msg.content.metric_records[S.METRICS_RECORD])
            self.round_log.evaluate[node] = m
            rows.append(m)
        if not rows:
            return None
        total = sum(m[S.NUM_EXAMPLES] for m in rows)
        return MetricRecord(
            {
                "clients": len(rows),
                S.NUM_EXAMPLES: int(total),
                S.EVAL_ACCURACY: sum(m[S.EVAL_ACCURACY] * m[S.NUM_EXAMPLES] for m in rows) / total,
                S.EVAL_LOSS: sum(m[S.EVAL_LOSS] * m[S.NUM_EXAMPLES] for m in rows) / total,
            }
        )

    # --- persistence (checkpoints) --------------------------------------------------------
    def state_dict(self) -> dict:
        """Server optimiser state (FedAdam/FedYogi moments) as tensors, for checkpoints."""
        out = {}
        for name in ("m_t", "v_t"):
            value = getattr(self, name, None)
            if value:
                out[name] = {
                    k: torch.from_numpy(np.array(v)) for k, v in value.items()
                }  # dtype kept: exact resume
        if self.privacy is not None:
            out["privacy"] = self.privacy.state_json()
        return out

    def privacy_spent(self) -> dict | None:
        """ε spent so far (DP runs), else None."""
        return self.privacy.spent() if self.privacy is not None else None

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict saved."""
        for name, value in state.items():
            if name == "privacy":
                if self.privacy is not None:
                    self.privacy.load_state_json(value)
                continue
            setattr(self, name, {k: v.numpy() for k, v in value.items()})


class OffsiteFedAvg(OffsiteStrategy, FedAvg):
    """FedAvg (or a TIES/DARE merge) of adapter deltas."""


class OffsiteFedAdam(OffsiteStrategy, FedAdam):
    """FedAdam: the merged delta is the pseudo-gradient of a server-side Adam step."""


class OffsiteFedYogi(OffsiteStrategy, FedYogi):
    """FedYogi: the merged delta is the pseudo-gradient of a server-side Yogi step."""


def make_strategy(
    cfg: FederationConfig, standin: StandIn, key: Ed25519PrivateKey, template: dict[str, torch.Tensor],
    run_id: str = "",
) -> OffsiteStrategy:
    """The configured strategy class with the run's settings (`run_id`: the nonce sites sign)."""
    if cfg.strategy == "fedavg":
        return OffsiteFedAvg(cfg, standin, key, template, run_id)
    opt = {"eta": cfg.server_lr, "eta_l": cfg.lr, "beta_1": cfg.server_beta1, "beta_2": cfg.server_beta2,
           "tau": cfg.server_tau}  # fmt: skip
    cls = OffsiteFedAdam if cfg.strategy == "fedadam" else OffsiteFedYogi
    return cls(cfg, standin, key, template, run_id, **opt)
