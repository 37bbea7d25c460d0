"""Wire schema shared by coordinator and client: record keys, config keys, metric names, message specs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Bump whenever a record key, config key, codec layout or hash rule changes meaning.
PROTOCOL_VERSION: int = 1


class ProtocolError(ValueError):
    """A message, config or payload does not follow the Offsite protocol."""


# --- record keys (names inside a Flower RecordDict) -----------------------------------------
ADAPTER_RECORD = "adapter"  # ArrayRecord: global adapter (ins) or encoded adapter delta (res)
STANDIN_RECORD = "standin"  # ArrayRecord: stand-in files, sent only to clients lacking its hash
METRICS_RECORD = "metrics"  # MetricRecord
CONFIG_RECORD = "config"  # ConfigRecord: the keys below
UPDATE_META_RECORD = "update-meta"  # ConfigRecord: codec metadata of an encoded update
UPDATE_SIGNATURE_RECORD = "update-signature"  # ConfigRecord: a site's signed update manifest

# --- config keys ----------------------------------------------------------------------------
PROTOCOL_VERSION_KEY = "protocol-version"
ROUND = "round"
STANDIN_HASH = "standin-hash"
LOCAL_STEPS = "local-steps"
BATCH_SIZE = "batch-size"
LR = "lr"
LORA_RANK = "lora-rank"
SEED = "seed"
TASK = "task"
CODEC = "codec"
DARE_P = "dare-p"
TOPK_FRACTION = "topk-fraction"
CLIP_NORM = "clip-norm"
MAX_EXAMPLES = "max-examples"
ADAPTER_MANIFEST = "adapter-manifest"  # canonical JSON string, see protocols.signing
ADAPTER_SIGNATURE = "adapter-signature"  # bytes
STANDIN_MANIFEST = "standin-manifest"
STANDIN_SIGNATURE = "standin-signature"
HAS_STANDIN = "has-standin"
RUN_ID = "run-id"  # the run's nonce, which a site signs into its update manifest (protocols.site_signing)
UPDATE_MANIFEST = "update-manifest"  # in UPDATE_SIGNATURE_RECORD: canonical JSON
UPDATE_SIGNATURE = "update-signature"  # in UPDATE_SIGNATURE_RECORD: bytes
# SecAgg+ fit config (legacy path): adapter tensor names in parameter order, and the LoRA merge mode.
ADAPTER_NAMES = "adapter-names"
LORA_AGGREGATION = "lora-aggregation"

# Python types each config key must carry; bool is excluded from int on purpose (True == 1).
CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    PROTOCOL_VERSION_KEY: (int,),
    ROUND: (int,),
    STANDIN_HASH: (str,),
    LOCAL_STEPS: (int,),
    BATCH_SIZE: (int,),
    LR: (float, int),
    LORA_RANK: (int,),
    SEED: (int,),
    TASK: (str,),
    CODEC: (str,),
    DARE_P: (float, int),
    TOPK_FRACTION: (float, int),
    CLIP_NORM: (float, int),
    MAX_EXAMPLES: (int,),
    ADAPTER_MANIFEST: (str,),
    ADAPTER_SIGNATURE: (bytes,),
    STANDIN_MANIFEST: (str,),
    STANDIN_SIGNATURE: (bytes,),
    HAS_STANDIN: (bool,),
    ADAPTER_NAMES: (str,),
    LORA_AGGREGATION: (str,),
    RUN_ID: (str,),
}

# --- metric names ---------------------------------------------------------------------------
NUM_EXAMPLES = "num-examples"  # Flower's built-in strategies weight by exactly this key
TRAIN_LOSS = "train-loss"
TRAIN_SECONDS = "train-seconds"
PEAK_MEM_MB = "peak-mem-mb"
BYTES_UP = "bytes-up"
BYTES_DOWN = "bytes-down"
MAX_ABS_DELTA = "max-abs-delta"
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"


def new_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of `values` stamped with this side's protocol version."""
    return {PROTOCOL_VERSION_KEY: PROTOCOL_VERSION, **values}


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def validate_config(config: Mapping[str, Any], required: Iterable[str], optional: Iterable[str] = ()) -> None:
    """Check a config dict: supported protocol version, every required key, no unknown key, known types."""
    required, optional = set(required) | {PROTOCOL_VERSION_KEY}, set(optional)
    # Version first: a peer on another version legitimately has other keys, so say that, not "extra key".
    if PROTOCOL_VERSION_KEY in config:
        version = config[PROTOCOL_VERSION_KEY]
        if not _type_ok(version, (int,)) or version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"unsupported protocol version {version!r} (this side speaks {PROTOCOL_VERSION}); "
                "upgrade coordinator and clients together"
            )
    missing = sorted(required - set(config))
    if missing:
        raise ProtocolError(f"config is missing required key(s): {', '.join(missing)}")
    extra = sorted(set(config) - required - optional)
    if extra:
        raise ProtocolError(f"config has unexpected key(s): {', '.join(extra)}")
    for key, value in config.items():
        types = CONFIG_TYPES.get(key)
        if types is not None and not _type_ok(value, types):
            expected = " or ".join(t.__name__ for t in types)
            raise ProtocolError(f"config key {key!r} must be {expected}, got {type(value).__name__}")


def _keys(*names: str) -> frozenset[str]:
    return frozenset(names)


@dataclass(frozen=True)
class MessageSpec:
    """What one message kind must carry: records by kind, config keys and metric names."""

    kind: str
    array_records: frozenset[str] = frozenset()
    optional_array_records: frozenset[str] = frozenset()
    config_records: frozenset[str] = frozenset()
    optional_config_records: frozenset[str] = frozenset()
    metric_records: frozenset[str] = frozenset()
    required_config: frozenset[str] = frozenset()
    optional_config: frozenset[str] = frozenset()
    # Config keys that become required when an optional array record is present.
    config_when_present: Mapping[str, frozenset[str]] = field(default_factory=dict)
    required_metrics: frozenset[str] = frozenset()
    optional_metrics: frozenset[str] = frozenset()

    def check(self, content: Any) -> None:
        """Validate a Flower `RecordDict` (or anything with the same record views) against this spec."""
        where = f"{self.kind} message"
        self._check_names(
            where, "ArrayRecord", set(content.array_records), self.array_records, self.optional_array_records
        )
        self._check_names(
            where,
            "ConfigRecord",
            set(content.config_records),
            self.config_records,
            self.optional_config_records,
        )
        self._check_names(
            where, "MetricRecord", set(content.metric_records), self.metric_records, frozenset()
        )
        if CONFIG_RECORD in self.config_records:
            required = set(self.required_config)
            for record, keys in self.config_when_present.items():
                if record in content.array_records:
                    required |= keys
            try:
                validate_config(dict(content.config_records[CONFIG_RECORD]), required, self.optional_config)
            except ProtocolError as err:
                raise ProtocolError(f"{where}: {err}") from None
        if METRICS_RECORD in self.metric_records:
            metrics = dict(content.metric_records[METRICS_RECORD])
            missing = sorted(self.required_metrics - set(metrics))
            extra = sorted(set(metrics) - self.required_metrics - self.optional_metrics)
            if missing:
                raise ProtocolError(f"{where}: metrics missing: {', '.join(missing)}")
            if extra:
                raise ProtocolError(f"{where}: unexpected metrics: {', '.join(extra)}")

    @staticmethod
    def _check_names(
        where: str, what: str, present: set[str], required: frozenset[str], optional: frozenset[str]
    ) -> None:
        missing = sorted(required - present)
        extra = sorted(present - required - optional)
        if missing:
            raise ProtocolError(f"{where}: missing {what}(s): {', '.join(missing)}")
        if extra:
            raise ProtocolError(f"{where}: unexpected {what}(s): {', '.join(extra)}")


_SIGNED_ADAPTER = _keys(ADAPTER_MANIFEST, ADAPTER_SIGNATURE)
_SIGNED_STANDIN = {STANDIN_RECORD: _keys(STANDIN_MANIFEST, STANDIN_SIGNATURE)}

TRAIN_INS = MessageSpec(
    kind="train-ins",
    array_records=_keys(ADAPTER_RECORD),
    optional_array_records=_keys(STANDIN_RECORD),
    config_records=_keys(CONFIG_RECORD),
    required_config=_keys(ROUND, STANDIN_HASH, LOCAL_STEPS, LR, LORA_RANK, SEED, TASK, CODEC)
    | _SIGNED_ADAPTER,
    optional_config=_keys(BATCH_SIZE, DARE_P, TOPK_FRACTION, CLIP_NORM, MAX_EXAMPLES, RUN_ID),
    config_when_present=_SIGNED_STANDIN,
)

# Flower's built-in strategies need every reply's MetricRecord to have the same keys, so a
# train reply carries all of these, always (use 0 where a value is unknown).
TRAIN_RES = MessageSpec(
    kind="train-res",
    array_records=_keys(ADAPTER_RECORD),
    config_records=_keys(UPDATE_META_RECORD),
    optional_config_records=_keys(UPDATE_SIGNATURE_RECORD),
    metric_records=_keys(METRICS_RECORD),
    required_metrics=_keys(
        NUM_EXAMPLES, TRAIN_LOSS, TRAIN_SECONDS, PEAK_MEM_MB, BYTES_UP, BYTES_DOWN, MAX_ABS_DELTA
    ),
)

EVALUATE_INS = MessageSpec(
    kind="evaluate-ins",
    array_records=_keys(ADAPTER_RECORD),
    optional_array_records=_keys(STANDIN_RECORD),
    config_records=_keys(CONFIG_RECORD),
    required_config=_keys(ROUND, STANDIN_HASH, SEED, TASK) | _SIGNED_ADAPTER,
    optional_config=_keys(BATCH_SIZE, MAX_EXAMPLES, LORA_RANK),
    config_when_present=_SIGNED_STANDIN,
)

EVALUATE_RES = MessageSpec(
    kind="evaluate-res",
    metric_records=_keys(METRICS_RECORD),
    required_metrics=_keys(NUM_EXAMPLES, EVAL_LOSS, EVAL_ACCURACY),
)

# "Do you already hold stand-in <hash>?" -- lets the coordinator skip the one big download.
QUERY_INS = MessageSpec(
    kind="query-ins",
    config_records=_keys(CONFIG_RECORD),
    required_config=_keys(STANDIN_HASH),
)

QUERY_RES = MessageSpec(
    kind="query-res",
    config_records=_keys(CONFIG_RECORD),
    required_config=_keys(STANDIN_HASH, HAS_STANDIN),
)

MESSAGE_SPECS: dict[str, MessageSpec] = {
    spec.kind: spec for spec in (TRAIN_INS, TRAIN_RES, EVALUATE_INS, EVALUATE_RES, QUERY_INS, QUERY_RES)
}


def check_message(kind: str, content: Any) -> None:
    """Validate a RecordDict against the spec registered for `kind` (e.g. "train-res")."""
    try:
        spec = MESSAGE_SPECS[kind]
    except KeyError:
        raise ProtocolError(
            f"unknown message kind {kind!r}; known: {', '.join(sorted(MESSAGE_SPECS))}"
        ) from None
    spec.check(content)
