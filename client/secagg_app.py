"""SecAgg+ at a site: Flower's `secaggplus_mod` around a legacy-format fit that returns the adapter delta.

With run-config `secure-aggregation=true` the coordinator runs Flower's `SecAggPlusWorkflow` (flwr
1.42: legacy API path only). Its train messages carry a "secaggplus" ConfigRecord; `client_app.train`
routes them here. The mod runs the protocol stages (key setup, key-share exchange, masking,
unmasking); in the masking stage it calls `fit`, which trains exactly as the plain path does (same
stand-in cache, signature check, local data, trainer, clipping) and returns the delta as a legacy
FitRes. The mod quantises and masks it, so the coordinator only ever sees the masked vector and,
after unmasking, the sum. The stand-in was delivered beforehand by a plain evaluate message.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from flwr.app import Context, Message
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from client.cache import StandinCache, cache_dir
from client.round_step import cached_standin, local_round
from client.trust import check_payload
from protocols import schema as S
from protocols.hashing import hash_state_dict

REQUIRED = (S.ROUND, S.STANDIN_HASH, S.LOCAL_STEPS, S.LR, S.LORA_RANK, S.SEED, S.TASK, S.ADAPTER_NAMES,
            S.ADAPTER_MANIFEST, S.ADAPTER_SIGNATURE)  # fmt: skip
OPTIONAL = (S.BATCH_SIZE, S.MAX_EXAMPLES, S.CLIP_NORM, S.LORA_AGGREGATION, KEY_CLIPPING_NORM)


def is_secagg(message: Message) -> bool:
    """Whether a train message belongs to a SecAgg+ round (it carries the protocol's ConfigRecord)."""
    return RECORD_KEY_CONFIGS in message.content.config_records


def secagg_train(message: Message, context: Context) -> Message:
    """One SecAgg+ stage at this site (Flower's mod), with `fit` as the local training step.

    Under DP (the coordinator's wrapper sends `clipping_norm`) Flower's `fixedclipping_mod` sits
    between the two and clips the update before it is masked.
    """
    return secaggplus_mod(message, context, lambda msg, ctx: _clipped_if_dp(msg, ctx))


def _clipped_if_dp(message: Message, context: Context) -> Message:
    fitins = compat.recorddict_to_fitins(message.content, keep_input=True)
    if KEY_CLIPPING_NORM in fitins.config:
        return fixedclipping_mod(message, context, fit)
    return fit(message, context)


def fit(message: Message, context: Context) -> Message:
    """Verify the signed global adapter, tune it locally, reply with the (clipped) delta as a FitRes."""
    fitins = compat.recorddict_to_fitins(message.content, keep_input=True)
    cfg = dict(fitins.config)
    S.validate_config(cfg, REQUIRED, OPTIONAL)
    names = json.loads(cfg[S.ADAPTER_NAMES])
    arrays = parameters_to_ndarrays(fitins.parameters)
    adapter = {n: torch.from_numpy(np.array(a, dtype=np.float32)) for n, a in zip(names, arrays, strict=True)}
    check_payload(
        context.node_config,
        cfg[S.ADAPTER_MANIFEST],
        cfg[S.ADAPTER_SIGNATURE],
        hash_state_dict(adapter),
        "adapter",
    )
    digest = cfg[S.STANDIN_HASH]
    if not StandinCache(cache_dir(context.node_config)).has(digest):
        raise S.ProtocolError(
            f"stand-in {digest[:12]}… is not in this site's cache; it must be delivered first"
        )
    step = local_round(context, cfg, cached_standin(context, digest), adapter)
    delta, examples = step.delta, step.examples
    if KEY_CLIPPING_NORM in cfg:  # DP: the whole adapter as received + delta, one weight per site
        sent = [(adapter[k] + delta[k] if k in delta else adapter[k]).numpy().astype(np.float32) for k in names]
        fitres = FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters(sent), 1, {})
    else:  # the delta alone, in the order of sorted trained names
        order = sorted(delta)
        parameters = ndarrays_to_parameters([delta[k].numpy().astype(np.float32) for k in order])
        fitres = FitRes(Status(Code.OK, "ok"), parameters, len(examples), {})
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=message)
