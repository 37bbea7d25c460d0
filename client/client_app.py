"""The Offsite ClientApp: hold the stand-in, tune the adapter on private data, send back a delta.

Message kinds (schemas in protocols.schema):
- query:    "do you hold stand-in <hash>?"  -> has-standin
- train:    global adapter (+ the stand-in, only if this node lacks it) -> encoded adapter delta + metrics
- evaluate: global adapter (+ stand-in if lacking) -> local accuracy/loss of the emulator carrying it
"""

from __future__ import annotations

import hashlib
import logging
from functools import partial

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.cache import StandinCache, cache_dir
from client.control_trainer import evaluate_control_update, is_control, train_control_update
from client.local_data import local_examples
from client.privacy import clip_update
from client.secagg_app import is_secagg, secagg_train
from client.trainer import evaluate_adapter, train_adapter
from client.trust import check_payload
from emulator.emulator import Emulator
from protocols import codecs
from protocols import schema as S
from protocols.hashing import hash_state_dict
from protocols.tensors import array_record_to_state_dict

log = logging.getLogger("offsite.client")
app = ClientApp()


def record_sha256(record: ArrayRecord) -> str:
    """SHA-256 of an ArrayRecord's tensors as sent (wire dtypes), the adapter manifest's content hash."""
    return hash_state_dict(array_record_to_state_dict(record, dtype=None))


def content_nbytes(content: RecordDict) -> int:
    """Bytes of every record in a message's content."""
    return int(sum(record.count_bytes() for record in content.values()))


def derive_seed(seed: int, server_round: int, who: object) -> int:
    """A per-site, per-round seed (for shuffling, dropout and DARE masks) from the run seed."""
    digest = hashlib.sha256(f"offsite:{seed}:{server_round}:{who}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF


def _site(context: Context) -> object:
    return context.node_config.get("partition-id", context.node_id)


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
    emu = cache.load(digest)
    if emu.tokenizer is None:
        raise ValueError(f"stand-in {digest[:12]}… has no tokenizer")
    if emu.tokenizer.pad_token_id is None:
        emu.tokenizer.pad_token = emu.tokenizer.eos_token
    return emu


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


def _codec_params(cfg: dict, seed: int) -> dict:
    codec = cfg[S.CODEC]
    if codec == "dare":
        return {"p": float(cfg.get(S.DARE_P, 0.5)), "seed": seed}
    if codec == "topk":
        return {"fraction": float(cfg.get(S.TOPK_FRACTION, 0.1))}
    return {}


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
    examples = local_examples(
        context.node_config, context.run_config, cfg[S.TASK], "train", cfg[S.SEED], cfg.get(S.MAX_EXAMPLES, 0)
    )
    seed = derive_seed(cfg[S.SEED], cfg[S.ROUND], _site(context))
    train_fn = train_adapter
    if is_control(emu):  # the stand-in's manifest says what it is; the control model is the adapter
        train_fn = partial(train_control_update, cache_root=cache_dir(context.node_config))
    update = train_fn(
        emu,
        adapter,
        examples,
        lora_rank=cfg[S.LORA_RANK],
        train_lora_a=context.run_config.get("lora-aggregation", "ffa") == "product",
        steps=cfg[S.LOCAL_STEPS],
        lr=float(cfg[S.LR]),
        batch_size=cfg.get(S.BATCH_SIZE, 16),
        seed=seed,
    )
    delta, norm = clip_update(update.delta, float(cfg.get(S.CLIP_NORM, 0.0)))
    encoded = codecs.encode(delta, cfg[S.CODEC], **_codec_params(cfg, seed))
    arrays, meta = codecs.to_records(encoded)
    metrics = MetricRecord(
        {
            S.NUM_EXAMPLES: len(examples),
            S.TRAIN_LOSS: float(update.stats.loss),
            S.TRAIN_SECONDS: float(update.stats.seconds),
            S.PEAK_MEM_MB: float(update.stats.peak_mem_mb),
            S.BYTES_UP: int(arrays.count_bytes() + meta.count_bytes()),
            S.BYTES_DOWN: bytes_down,
            S.MAX_ABS_DELTA: float(codecs.max_abs(delta)),
        }
    )
    reply = RecordDict({S.ADAPTER_RECORD: arrays, S.UPDATE_META_RECORD: meta, S.METRICS_RECORD: metrics})
    S.check_message("train-res", reply)
    log.info(
        "round %s site %s: %d examples, loss %.3f, |delta| %.3g, %.1f s",
        cfg[S.ROUND], _site(context), len(examples), update.stats.loss, norm, update.stats.seconds,
    )  # fmt: skip
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
        acc, loss = evaluate_adapter(emu, adapter, examples, cfg.get(S.LORA_RANK, 0))
    metrics = MetricRecord({S.NUM_EXAMPLES: len(examples), S.EVAL_LOSS: loss, S.EVAL_ACCURACY: acc})
    reply = RecordDict({S.METRICS_RECORD: metrics})
    S.check_message("evaluate-res", reply)
    return Message(reply, reply_to=message)
