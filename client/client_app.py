"""The Offsite ClientApp: hold the stand-in, tune the adapter on private data, send back a delta.

Message kinds (schemas in protocols.schema):
- query:    "do you hold stand-in <hash>?"  -> has-standin
- train:    global adapter (+ the stand-in, only if this node lacks it) -> encoded adapter delta + metrics
- evaluate: global adapter (+ stand-in if lacking) -> local accuracy/loss of the emulator carrying it
"""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.cache import StandinCache, cache_dir
from client.control_trainer import evaluate_control_update, is_control
from client.local_data import local_examples
from client.round_step import cached_standin, compute_settings, local_round
from client.secagg_app import is_secagg, secagg_train
from client.trainer import evaluate_adapter
from client.trust import check_payload, sign_reply
from emulator.emulator import Emulator
from protocols import codecs
from protocols import schema as S
from protocols.records import content_nbytes, record_sha256
from protocols.tensors import array_record_to_state_dict

log = logging.getLogger("offsite.client")
app = ClientApp()


def _emulator(content: RecordDict, cfg: dict, context: Context) -> Emulator:
    """The stand-in named by the message: stored first if the message carries it, then loaded."""
    digest = cfg[S.STANDIN_HASH]
    cache = StandinCache(cache_dir(context.node_config))
    if S.STANDIN_RECORD in content.array_records:
        check_payload(
            context.node_config, cfg[S.STANDIN_MANIFEST], cfg[S.STANDIN_SIGNATURE], digest, kind="standin"
        )
        cache.store(content.array_records[S.STANDIN_RECORD], digest)
        log.info("stand-in %s… stored in %s", digest[:12], cache.root)
    return cached_standin(context, digest)


def _adapter(content: RecordDict, cfg: dict, context: Context) -> dict:
    record = content.array_records[S.ADAPTER_RECORD]
    check_payload(
        context.node_config,
        cfg[S.ADAPTER_MANIFEST],
        cfg[S.ADAPTER_SIGNATURE],
        record_sha256(record),
        "adapter",
    )
    return array_record_to_state_dict(record)


@app.query()
def query(message: Message, context: Context) -> Message:
    """Answer whether this node already holds a stand-in, so the coordinator can skip sending it."""
    S.check_message("query-ins", message.content)
    digest = message.content.config_records[S.CONFIG_RECORD][S.STANDIN_HASH]
    has = StandinCache(cache_dir(context.node_config)).has(digest)
    config = ConfigRecord(S.new_config({S.STANDIN_HASH: digest, S.HAS_STANDIN: has}))
    return Message(RecordDict({S.CONFIG_RECORD: config}), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Tune the global adapter locally and reply with its encoded delta and metrics."""
    if is_secagg(message):  # a SecAgg+ stage (run-config secure-aggregation=true): client.secagg_app
        return secagg_train(message, context)
    content = message.content
    S.check_message("train-ins", content)
    cfg = dict(content.config_records[S.CONFIG_RECORD])
    bytes_down = content_nbytes(content)
    emu = _emulator(content, cfg, context)
    adapter = _adapter(content, cfg, context)
    step = local_round(context, cfg, emu, adapter)
    delta, update, examples = step.delta, step.update, step.examples
    encoded = codecs.encode(delta, cfg[S.CODEC], **codecs.CODECS[cfg[S.CODEC]].params_from(cfg, step.seed))
    arrays, meta = codecs.to_records(encoded)
    metrics = MetricRecord(
        {
            S.NUM_EXAMPLES: len(examples),
            S.TRAIN_LOSS: float(update.stats.loss),
            S.TRAIN_SECONDS: float(update.stats.seconds),
            # CUDA max allocated on a GPU site, peak process RSS on a CPU one (emulator.train).
            S.PEAK_MEM_MB: float(update.stats.peak_mem_mb),
            S.BYTES_UP: int(arrays.count_bytes() + meta.count_bytes()),
            S.BYTES_DOWN: bytes_down,
            S.MAX_ABS_DELTA: float(codecs.max_abs(delta)),
        }
    )
    reply = RecordDict({S.ADAPTER_RECORD: arrays, S.UPDATE_META_RECORD: meta, S.METRICS_RECORD: metrics})
    signed = sign_reply(context, cfg, arrays, meta, len(examples))
    if signed is not None:
        reply[S.UPDATE_SIGNATURE_RECORD] = signed
    S.check_message("train-res", reply)
    return Message(reply, reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Score the emulator carrying the global adapter on this site's held-out examples."""
    content = message.content
    S.check_message("evaluate-ins", content)
    cfg = dict(content.config_records[S.CONFIG_RECORD])
    emu = _emulator(content, cfg, context)
    adapter = _adapter(content, cfg, context)
    examples = local_examples(
        context.node_config, context.run_config, cfg[S.TASK], "test", cfg[S.SEED], cfg.get(S.MAX_EXAMPLES, 0)
    )
    if is_control(emu):
        acc, loss = evaluate_control_update(emu, adapter, examples)
    else:
        device, precision = compute_settings(context)
        acc, loss = evaluate_adapter(emu, adapter, examples, cfg.get(S.LORA_RANK, 0), device, precision)
    metrics = MetricRecord({S.NUM_EXAMPLES: len(examples), S.EVAL_LOSS: loss, S.EVAL_ACCURACY: acc})
    reply = RecordDict({S.METRICS_RECORD: metrics})
    S.check_message("evaluate-res", reply)
    return Message(reply, reply_to=message)
