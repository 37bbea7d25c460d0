"""Secure aggregation (SecAgg+): the coordinator learns only the sum of the sites' adapter deltas.

flwr 1.41 offers SecAgg+ on the legacy API path only, so this follows Flower's own example: a
legacy `Strategy` inside `DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`, run from a
Message-API `main` with a `LegacyContext`. Sites run `secaggplus_mod` (client.secagg_app). Before
round 1 the signed stand-in reaches the sites that lack it through a plain, signed `evaluate`
message (round 0), so the SecAgg+ rounds carry only the signed global adapter and masked deltas.

What the coordinator can no longer do here: validate individual updates (it never sees them).
It checks the unmasked aggregate (names, shapes, finite values); sites clip their own delta
(`clip-norm`), which bounds each one's influence. Dropped sites are tolerated as long as
`secagg-threshold` of each dropped site's share holders answer (Flower reconstructs its masks).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context, MessageType
from flwr.common import FitIns, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid, ServerApp
from safetensors.torch import save_file

from coordinator.config import FederationConfig
from coordinator.federation.lineage import append_round, round_record
from coordinator.federation.loop import (
    evaluate_config,
    evaluate_server,
    initial_adapter,
    run_dir_for,
    server_eval_due,
)
from coordinator.federation.standin.bundle import StandIn, prepare_standin, sign, signing_key
from coordinator.federation.strategy import make_strategy
from emulator.data import load_task
from emulator.evaluate import accuracy
from emulator.plugin import trained_adapter_names
from emulator.zoo import load_model
from protocols import schema as S
from protocols.hashing import hash_state_dict
from protocols.seeds import sample_nodes

log = logging.getLogger("offsite.coordinator")


class SecAggFedAvg(LegacyFedAvg):
    """Legacy FedAvg over adapter deltas: SecAgg+ hands it the weighted mean delta, never a site's own."""

    def __init__(
        self, cfg: FederationConfig, standin: StandIn, key, adapter: dict[str, torch.Tensor], evaluate
    ):
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=max(2, cfg.min_clients),
            min_available_clients=max(2, cfg.min_clients),
            accept_failures=True,
        )
        self.cfg, self.standin, self.key = cfg, standin, key
        self.adapter = {k: v.float().clone() for k, v in adapter.items()}
        self.trained = trained_adapter_names(adapter, cfg.lora_rank, cfg.lora_aggregation == "product")
        self.evaluate_fn = evaluate
        self.rounds: list[dict] = []
        self.last_mean: dict[str, torch.Tensor] = {}

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """The round-0 global adapter (fp32, sorted names)."""
        return ndarrays_to_parameters([self.adapter[k].numpy() for k in sorted(self.adapter)])

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        """A seeded sample of clients-per-round sites, each sent the signed global adapter."""
        if not client_manager.wait_for(max(2, self.cfg.min_clients), timeout=int(self.cfg.node_timeout)):
            log.warning("round %d: fewer than %d sites connected", server_round, max(2, self.cfg.min_clients))
            return []
        proxies = client_manager.all()
        by_id = {p.node_id: p for p in proxies.values()}
        chosen = [
            by_id[n]
            for n in sample_nodes(self.cfg.seed, server_round, list(by_id), self.cfg.clients_per_round)
        ]
        names = sorted(self.adapter)
        manifest, signature = sign(
            self.key, hash_state_dict(self.adapter), "adapter", self.standin.hash, server_round
        )
        config = {
            S.ROUND: server_round,
            S.STANDIN_HASH: self.standin.hash,
            S.LOCAL_STEPS: self.cfg.local_steps,
            S.LR: self.cfg.lr,
            S.LORA_RANK: self.cfg.lora_rank,
            S.LORA_AGGREGATION: self.cfg.lora_aggregation,
            S.SEED: self.cfg.seed,
            S.TASK: self.cfg.task,
            S.BATCH_SIZE: self.cfg.batch_size,
            S.ADAPTER_NAMES: json.dumps(names),
            S.ADAPTER_MANIFEST: manifest,
            S.ADAPTER_SIGNATURE: signature,
            S.PROTOCOL_VERSION_KEY: S.PROTOCOL_VERSION,
        }
        if self.cfg.max_examples:
            config[S.MAX_EXAMPLES] = self.cfg.max_examples
        if self.cfg.clip_norm:
            config[S.CLIP_NORM] = self.cfg.clip_norm
        self._t0, self._sent = time.perf_counter(), [p.node_id for p in chosen]
        return [(p, FitIns(parameters, dict(config))) for p in chosen]

    def aggregate_fit(self, server_round: int, results, failures):
        """global += the unmasked mean delta (the same aggregate is attached to every result)."""
        if not results:
            return None, {}
        mean = parameters_to_ndarrays(results[0][1].parameters)
        if len(mean) != len(self.trained):
            raise S.ProtocolError(f"aggregate has {len(mean)} tensors, expected {len(self.trained)}")
        delta = {}
        for name, arr in zip(self.trained, mean, strict=True):
            if tuple(arr.shape) != tuple(self.adapter[name].shape) or not np.isfinite(arr).all():
                raise S.ProtocolError(f"aggregate tensor {name} has a wrong shape or non-finite values")
            delta[name] = torch.from_numpy(np.array(arr, dtype=np.float32))
        previous = dict(self.adapter)
        self.adapter = {k: v + delta[k] if k in delta else v for k, v in self.adapter.items()}
        self.last_mean = delta
        norm = math.sqrt(sum(float(t.double().pow(2).sum()) for t in delta.values()))
        self.rounds.append(
            {
                "round": server_round,
                "sampled": self._sent,
                "summed": sorted(int(p.node_id) for p, _ in results),
                # Flower 1.41 lists a site that drops in the masking stage twice in `failures`.
                "dropped": len(self._sent) - len(results),
                "num-examples": int(sum(r.num_examples for _, r in results)),
                "mean-delta-norm": norm,
                "wall_s": time.perf_counter() - self._t0,
            }
        )
        # The coordinator knows which sites' masked vectors went into the sum, not their contents.
        merged = [(int(p.node_id), "secagg+", float(r.num_examples)) for p, r in results]
        append_round(self.run_dir, self.key, round_record(server_round, self.standin.hash, previous,
                                                          self.adapter, True, "secagg+", merged))  # fmt: skip
        return ndarrays_to_parameters([self.adapter[k].numpy() for k in sorted(self.adapter)]), {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        """No client-side evaluation in SecAgg+ rounds."""
        return []

    def evaluate(self, server_round: int, parameters: Parameters):
        """Plug-in and emulator-FT accuracy of the current global adapter (rounds `eval-every` selects)."""
        if server_round == 0 or not server_eval_due(self.cfg, server_round):
            return None
        scores = self.evaluate_fn(self.adapter)
        if self.rounds and self.rounds[-1]["round"] == server_round:
            self.rounds[-1].update(scores)
        return 0.0, scores


def deliver_standin(grid: Grid, cfg: FederationConfig, standin: StandIn, key, adapter) -> list[int]:
    """Send the signed stand-in (in a round-0 evaluate message) to sampled sites lacking it; the sites."""
    helper = make_strategy(cfg, standin, key, adapter)
    nodes = helper.wait_for_nodes(grid, cfg.clients_per_round)
    helper.query_holders(grid, nodes)
    lacking = [n for n in nodes if n not in helper.holders]
    if lacking:
        config = dict(evaluate_config(cfg))
        messages = helper._messages(0(adapter), config, lacking, MessageType.EVALUATE)
        for reply in grid.send_and_receive(messages, timeout=cfg.round_timeout):
            if reply.has_error():
                log.warning(
                    "stand-in delivery to node %s failed: %s", reply.metadata.src_node_id, reply.error.reason
                )
    log.info("stand-in delivered to %d of %d site(s)", len(lacking), len(nodes))
    return nodes


def run_secure(grid: Grid, context: Context, cfg: FederationConfig) -> dict:
    """A federated run whose rounds aggregate with SecAgg+; writes adapter.safetensors and report.json."""
    run_dir = run_dir_for(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    full, tok = load_model(cfg.model)
    key = signing_key(cfg, run_dir)
    standin = prepare_standin(cfg, full, tok, run_dir, key)
    emu = standin.load()
    eval_set = load_task(cfg.task, "test")[: cfg.eval_size]
    adapter = initial_adapter(cfg, full, emu)
    baseline = {
        "full zero-shot": accuracy(full, tok, eval_set),
        "emulator zero-shot": accuracy(emu.model, tok, eval_set),
    }
    nodes = deliver_standin(grid, cfg, standin, key, adapter)

    strategy = SecAggFedAvg(
        cfg, standin, key, adapter, lambda a: evaluate_server(full, emu, tok, a, cfg.lora_rank, eval_set)
    )
    strategy.run_dir = run_dir
    shares = min(cfg.secagg_shares, len(nodes), cfg.clients_per_round)
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(
            num_shares=shares,
            reconstruction_threshold=min(cfg.secagg_threshold, shares),
            # Each masked vector is weighted by num-examples / max_weight *before* quantisation (2^22
            # levels over ±8): a max_weight far above the real counts wipes out small deltas.
            max_weight=float(cfg.max_examples) if cfg.max_examples else 1000.0,
            timeout=cfg.round_timeout,
        )
    )
    legacy = LegacyContext(
        context=context,
        config=ServerConfig(num_rounds=cfg.rounds, round_timeout=cfg.round_timeout),
        strategy=strategy,
    )
    workflow(grid, legacy)

    save_file({k: v.contiguous() for k, v in strategy.adapter.items()}, str(run_dir / "adapter.safetensors"))
    report = {
        "run_dir": str(run_dir),
        "mode": "secagg+",
        "config": cfg.to_run_config(),
        "standin": {"hash": standin.hash, "bytes": standin.nbytes},
        "baseline": baseline,
        "rounds": strategy.rounds,
        "final": strategy.rounds[-1] if strategy.rounds else None,
    }
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    log.info(
        "SecAgg+ run finished: %s", json.dumps(strategy.rounds[-1] if strategy.rounds else {}, default=str)
    )
    return report


def make_secagg_server_app(overrides: dict | None = None) -> ServerApp:
    """A ServerApp that always runs SecAgg+ rounds (run config plus `overrides`; for tests)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_config = {**dict(context.run_config), **(overrides or {}), "secure-aggregation": True}
        run_secure(grid, context, FederationConfig.from_run_config(run_config))

    return app


app = make_secagg_server_app()


def load_report(run_dir: str | Path) -> dict:
    """The report.json a SecAgg+ run wrote."""
    return json.loads((Path(run_dir) / "report.json").read_text())
