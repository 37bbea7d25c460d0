"""Secure aggregation (SecAgg+): the coordinator learns only the sum of the sites' adapter deltas.

flwr 1.42 offers SecAgg+ on the legacy API path only, so this follows Flower's own example: a
legacy `Strategy` inside `DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`, run from a
Message-API `main` with a `LegacyContext`. Sites run `secaggplus_mod` (client.secagg_app). Before
the first round the signed stand-in reaches the sites that lack it through a plain, signed
`evaluate` message (round 0), so the SecAgg+ rounds carry only the signed global adapter and
masked deltas. The run itself is the round loop's (`coordinator.federation.loop`): the same start
or resume, run store, metrics, logs, checkpoints, lineage and report; only the rounds differ.

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

import numpy as np
import torch
from flwr.app import Context, MessageType
from flwr.common import FitIns, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping as LegacyClientSideDP
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

from coordinator.aggregation.privacy import make_accountant, privacy_spent
from coordinator.config import ConfigError
from coordinator.federation.messages import evaluate_config
from coordinator.federation.run import Run, last_round, record_round, server_eval_due
from coordinator.federation.standin.bundle import sign
from coordinator.federation.strategy import make_strategy
from emulator.plugin import trained_adapter_names
from protocols import schema as S
from protocols.hashing import hash_state_dict
from protocols.records import to_float32_record
from protocols.seeds import dp_noise_seed, sample_nodes

log = logging.getLogger("offsite.coordinator")


class SecAggFedAvg(LegacyFedAvg):
    """Legacy FedAvg over adapter deltas: SecAgg+ hands it the weighted mean delta, never a site's own.

    Flower numbers the workflow's rounds from 1; a resumed run's rounds go on from `run.start`.
    """

    def __init__(self, run: Run):
        cfg = run.cfg
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=max(2, cfg.min_clients),
            min_available_clients=max(2, cfg.min_clients),
            accept_failures=True,
        )
        self.run, self.cfg = run, cfg
        self.trained = trained_adapter_names(run.adapter, cfg.lora_rank, cfg.lora_aggregation == "product")
        self.privacy: SecAggClientDP | None = None  # set by the DP wrapper: sites then send clipped full adapters
        if cfg.dp == "client":  # fixedclipping_mod clips (sent - received), so sites send the whole adapter
            self.trained = sorted(run.adapter)
        self._bytes_up = 4 * sum(run.adapter[k].numel() for k in self.trained)
        self.pending: dict | None = None  # the round aggregate_fit saw, recorded by evaluate

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """The current global adapter (fp32, sorted names)."""
        return self._parameters()

    def _parameters(self) -> Parameters:
        return ndarrays_to_parameters([self.run.adapter[k].numpy() for k in sorted(self.run.adapter)])

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        """A seeded sample of clients-per-round sites, each sent the signed global adapter."""
        cfg, rnd = self.cfg, server_round + self.run.start
        if not client_manager.wait_for(max(2, cfg.min_clients), timeout=int(cfg.node_timeout)):
            log.warning("round %d: fewer than %d sites connected", rnd, max(2, cfg.min_clients))
            return []
        by_id = {p.node_id: p for p in client_manager.all().values()}
        chosen = [by_id[n] for n in sample_nodes(cfg.seed, rnd, list(by_id), cfg.clients_per_round)]
        adapter = self.run.adapter
        manifest, signature = sign(
            self.run.key, hash_state_dict(adapter), "adapter", self.run.standin.hash, rnd
        )
        config = {
            S.ROUND: rnd,
            S.STANDIN_HASH: self.run.standin.hash,
            S.LOCAL_STEPS: cfg.local_steps,
            S.LR: cfg.lr,
            S.LORA_RANK: cfg.lora_rank,
            S.LORA_AGGREGATION: cfg.lora_aggregation,
            S.SEED: cfg.seed,
            S.TASK: cfg.task,
            S.BATCH_SIZE: cfg.batch_size,
            S.ADAPTER_NAMES: json.dumps(sorted(adapter)),
            S.ADAPTER_MANIFEST: manifest,
            S.ADAPTER_SIGNATURE: signature,
            S.PROTOCOL_VERSION_KEY: S.PROTOCOL_VERSION,
        }
        if cfg.max_examples:
            config[S.MAX_EXAMPLES] = cfg.max_examples
        if cfg.clip_norm:
            config[S.CLIP_NORM] = cfg.clip_norm
        self._t0, self._sent = time.perf_counter(), [p.node_id for p in chosen]
        self._bytes_down = sum(len(t) for t in parameters.tensors)
        self.run.obs.round_started(rnd, self._sent)
        return [(p, FitIns(parameters, dict(config))) for p in chosen]

    def aggregate_fit(self, server_round: int, results, failures):
        """global += the unmasked mean delta (the same aggregate is attached to every result)."""
        rnd = server_round + self.run.start
        previous = dict(self.run.adapter)
        self.pending = {"round": rnd, "previous": previous, "results": results, "delta_norm": None}
        if not results:
            return None, {}
        mean = self._checked(parameters_to_ndarrays(results[0][1].parameters), previous)
        if self.privacy is not None:  # the mean of the clipped adapters sent; the wrapper adds the noise
            mean = {k: v - previous[k] for k, v in mean.items()}
        self.run.adapter = {k: v + mean[k] if k in mean else v for k, v in previous.items()}
        self.pending["delta_norm"] = math.sqrt(sum(float(t.double().pow(2).sum()) for t in mean.values()))
        return self._parameters(), {}

    def _checked(self, arrays: list[np.ndarray], previous: dict) -> dict[str, torch.Tensor]:
        """The aggregate's tensors by name, refused if their count, shapes or values are wrong."""
        if len(arrays) != len(self.trained):
            raise S.ProtocolError(f"aggregate has {len(arrays)} tensors, expected {len(self.trained)}")
        out = {}
        for name, arr in zip(self.trained, arrays, strict=True):
            if tuple(arr.shape) != tuple(previous[name].shape) or not np.isfinite(arr).all():
                raise S.ProtocolError(f"aggregate tensor {name} has a wrong shape or non-finite values")
            out[name] = torch.from_numpy(np.array(arr, dtype=np.float32))
        return out

    def set_adapter(self, parameters: Parameters) -> None:
        """Make `parameters` (under DP: the whole adapter, sorted names, noised) the global adapter."""
        self.run.adapter = {**self.run.adapter, **self._checked(parameters_to_ndarrays(parameters), self.run.adapter)}

    def configure_evaluate(self, server_round, parameters, client_manager):
        """No client-side evaluation in SecAgg+ rounds."""
        return []

    def evaluate(self, server_round: int, parameters: Parameters):
        """After each round: the server's scores (rounds `eval-every` selects), then the round is kept."""
        if server_round == 0 or self.pending is None:
            return None
        rnd = self.pending["round"]
        due = server_eval_due(self.cfg, rnd)
        scores = self.run.evaluate(self.run.adapter) if due else {"plug-in": None, "emulator FT": None}
        state = {"privacy": self.privacy.state_json()} if self.privacy is not None else {}
        record_round(self.run, self._entry(scores), self.pending["previous"], "secagg+", self._merged(), state)
        log.info("round %d/%d (SecAgg+): %d of %d sites summed, %.1f s", rnd, self.cfg.rounds,
                 len(self.pending["results"]), len(self._sent), self.run.history[-1]["wall_s"])  # fmt: skip
        self.pending = None
        return (0.0, scores) if due else None

    def _merged(self) -> list[tuple[int, str, float]]:
        # The coordinator knows which sites' masked vectors went into the sum, not their contents.
        return [(int(p.node_id), "secagg+", float(r.num_examples)) for p, r in self.pending["results"]]

    def _entry(self, scores: dict) -> dict:
        results = self.pending["results"]
        summed = {int(p.node_id): r for p, r in results}
        clients = [
            {"node": int(n), "status": "ok" if n in summed else "dropped", "standin_sent": False,
             "reason": "" if n in summed else "dropped out of the SecAgg+ round",
             "bytes_down": self._bytes_down, "bytes_up": self._bytes_up if n in summed else 0,
             **({S.NUM_EXAMPLES: summed[n].num_examples} if n in summed else {})}
            for n in self._sent
        ]  # fmt: skip
        train = None
        if results:
            train = {"clients": len(results), S.NUM_EXAMPLES: int(sum(r.num_examples for _, r in results)),
                     "mean-delta-norm": self.pending["delta_norm"]}  # fmt: skip
        return {
            "round": self.pending["round"],
            "updated": bool(results),
            "wall_s": time.perf_counter() - self._t0,
            "train_s": None,
            "query_s": 0.0,
            **scores,
            "train": train,
            "client_eval": None,
            "clients": clients,
            "rejected": 0,
            "privacy": self.privacy.spent() if self.privacy is not None else None,
            # bytes_up is the fp32 size of the delta each masked vector carries: Flower quantises it
            # before masking, and the coordinator never sees one site's vector alone to count it.
            "secagg": {
                "sampled": [int(n) for n in self._sent],
                "summed": sorted(summed),
                "dropped": len(self._sent) - len(results),
                "bytes_up_basis": "fp32 size of the delta",
            },
        }


class SecAggClientDP(LegacyClientSideDP):
    """DP under SecAgg+: Flower's client-side fixed-clipping wrapper around `SecAggFedAvg`.

    Sites clip their update with Flower's `fixedclipping_mod` before `secaggplus_mod` masks it; the
    coordinator adds N(0, (z·C/n)²) per entry to the unmasked mean (Flower's wrapper, numpy's
    generator seeded from the run seed for that release only) and composes one release per round in
    Flower's RDP accountant, so ε is known after every round. Sites weigh 1 each (the mean the noise
    is calibrated for).
    """

    def __init__(self, inner: SecAggFedAvg, run: Run):
        cfg = run.cfg
        super().__init__(inner, cfg.dp_noise_multiplier, cfg.dp_clip_norm, cfg.clients_per_round)
        self.inner, self.run, self.cfg = inner, run, cfg
        self.accountant = make_accountant(cfg)
        if run.strategy_state.get("privacy"):  # resume: the privacy spent so far
            self.accountant.load_state_dict(json.loads(run.strategy_state["privacy"]))
        self._event: GaussianPrivacyEvent | None = None
        inner.privacy = self

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        """The inner sample, with clipping_norm; refused (PrivacyBudgetExhausted) past dp-max-epsilon."""
        # Checked before anything is sent; without sampling amplification ε does not depend on n.
        planned = self._release(self.cfg.clients_per_round)
        if self.cfg.dp_max_epsilon and self.accountant.would_exceed(planned):
            raise PrivacyBudgetExhausted(
                f"the next release would exceed max_epsilon (epsilon so far {self.spent()['epsilon']:.3f})"
            )
        out = super().configure_fit(server_round, parameters, client_manager)
        if out:
            self.num_sampled_clients = len(out)  # the noise std z·C/n for the n actually asked
            self._event = self._release(len(out))
        return out

    def _release(self, n: int) -> GaussianPrivacyEvent:
        return GaussianPrivacyEvent(noise_multiplier=self.noise_multiplier, sample_size=n,
                                    population_size=self.cfg.clients_per_round)  # fmt: skip

    def aggregate_fit(self, server_round: int, results, failures):
        """The noised mean as the new global adapter (nothing is released if a sampled site dropped)."""
        rnd = server_round + self.run.start
        if failures or not results:
            log.warning("round %d: %d sampled site(s) dropped; DP releases nothing this round", rnd, len(failures))
            self.inner.pending = {"round": rnd, "previous": dict(self.run.adapter), "results": [], "delta_norm": None}
            return None, {}
        saved = np.random.get_state()
        np.random.seed(dp_noise_seed(self.cfg.seed, rnd))
        try:
            parameters, metrics = super().aggregate_fit(server_round, results, failures)
        finally:
            np.random.set_state(saved)
        self.inner.set_adapter(parameters)
        self.accountant.compose(self._event)
        log.info("round %d: ε %.3f at δ %g", rnd, self.spent()["epsilon"], self.cfg.dp_delta)
        return parameters, metrics

    def spent(self) -> dict:
        """ε so far, in the report's form."""
        return privacy_spent(self.cfg, self.accountant)

    def state_json(self) -> str:
        """The accountant's state, for the round's checkpoint."""
        return json.dumps(self.accountant.state_dict())


def deliver_standin(grid: Grid, run: Run) -> list[int]:
    """Send the signed stand-in (in a round-0 evaluate message) to sampled sites lacking it; the sites."""
    cfg = run.cfg
    helper = make_strategy(cfg, run.standin, run.key, run.adapter)
    nodes = helper.wait_for_nodes(grid, cfg.clients_per_round)
    helper.query_holders(grid, nodes)
    lacking = [n for n in nodes if n not in helper.holders]
    if lacking:
        config = dict(evaluate_config(cfg))
        messages = helper._messages(0, to_float32_record(run.adapter), config, lacking, MessageType.EVALUATE)
        for reply in grid.send_and_receive(messages, timeout=cfg.round_timeout):
            if reply.has_error():
                log.warning(
                    "stand-in delivery to node %s failed: %s", reply.metadata.src_node_id, reply.error.reason
                )
    log.info("stand-in delivered to %d of %d site(s)", len(lacking), len(nodes))
    return nodes


def play_secure_rounds(run: Run, grid: Grid, context: Context | None) -> dict | None:
    """The run's remaining rounds on Flower's SecAgg+ workflow; the privacy spent (None without DP)."""
    if context is None:
        raise ConfigError("secure-aggregation runs inside a ServerApp: it needs the ServerApp's context")
    cfg = run.cfg
    inner = SecAggFedAvg(run)
    strategy = SecAggClientDP(inner, run) if cfg.dp == "client" else inner
    remaining = last_round(cfg) - run.start
    if remaining <= 0:
        return inner.privacy.spent() if inner.privacy is not None else None
    nodes = deliver_standin(grid, run)
    workflow = DefaultWorkflow(fit_workflow=_secagg_workflow(run, len(nodes)))
    legacy = LegacyContext(
        context=context,
        config=ServerConfig(num_rounds=remaining, round_timeout=cfg.round_timeout),
        strategy=strategy,
    )
    try:
        workflow(grid, legacy)
    except PrivacyBudgetExhausted as exc:  # raised before the round sends anything
        rnd = (run.history[-1]["round"] if run.history else run.start) + 1
        run.stop_reason = f"dp-max-epsilon {cfg.dp_max_epsilon} reached before round {rnd}: {exc}"
        log.warning("%s; the run ends with round %d's adapter", run.stop_reason, rnd - 1)
    return inner.privacy.spent() if inner.privacy is not None else None


def _secagg_workflow(run: Run, n_nodes: int) -> SecAggPlusWorkflow:
    """Flower's SecAgg+ workflow sized for the run: shares, threshold, weights and value range."""
    cfg = run.cfg
    shares = min(cfg.secagg_shares, n_nodes, cfg.clients_per_round)
    # Each masked vector is weighted by num-examples / max_weight *before* quantisation (2^22 levels
    # over ±clipping_range): a max_weight far above the real counts wipes out small deltas. Under DP
    # each site weighs 1 and sends its whole clipped adapter, so the range must hold the adapter too.
    max_weight = 1.0 if cfg.dp == "client" else float(cfg.max_examples) if cfg.max_examples else 1000.0
    largest = max(float(t.abs().max()) for t in run.adapter.values()) if cfg.dp == "client" else 0.0
    return SecAggPlusWorkflow(
        num_shares=shares,
        reconstruction_threshold=min(cfg.secagg_threshold, shares),
        max_weight=max_weight,
        clipping_range=8.0 + 2 * largest + (cfg.dp_clip_norm if cfg.dp == "client" else 0.0),
        timeout=cfg.round_timeout,
    )
