"""Config validation and message specs."""

from __future__ import annotations

import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from protocols import schema as s
from protocols.schema import ProtocolError, validate_config


def train_config(**over) -> dict:
    cfg = s.new_config(
        {
            s.ROUND: 1,
            s.STANDIN_HASH: "ab" * 32,
            s.LOCAL_STEPS: 30,
            s.LR: 1e-3,
            s.LORA_RANK: 0,
            s.SEED: 0,
            s.TASK: "wn-category",
            s.CODEC: "dare",
            s.DARE_P: 0.9,
            s.ADAPTER_MANIFEST: "{}",
            s.ADAPTER_SIGNATURE: b"sig",
        }
    )
    cfg.update(over)
    return cfg


def check_train_config(cfg: dict) -> None:
    validate_config(cfg, s.TRAIN_INS.required_config, s.TRAIN_INS.optional_config)


def test_valid_config_passes():
    check_train_config(train_config())


def test_unknown_protocol_version_rejected_before_other_checks():
    cfg = train_config(**{s.PROTOCOL_VERSION_KEY: s.PROTOCOL_VERSION + 1, "brand-new-key": 1})
    with pytest.raises(ProtocolError, match="unsupported protocol version 2"):
        check_train_config(cfg)


def test_missing_key_is_named():
    cfg = train_config()
    del cfg[s.LOCAL_STEPS]
    with pytest.raises(ProtocolError, match="missing required key.*local-steps"):
        check_train_config(cfg)


def test_missing_protocol_version_is_named():
    cfg = train_config()
    del cfg[s.PROTOCOL_VERSION_KEY]
    with pytest.raises(ProtocolError, match="protocol-version"):
        check_train_config(cfg)


def test_extra_key_is_named():
    with pytest.raises(ProtocolError, match="unexpected key.*learning-rate"):
        check_train_config(train_config(**{"learning-rate": 0.1}))


def test_wrong_type_rejected_and_bool_is_not_int():
    with pytest.raises(ProtocolError, match="local-steps.*must be int"):
        check_train_config(train_config(**{s.LOCAL_STEPS: True}))
    with pytest.raises(ProtocolError, match="lr"):
        check_train_config(train_config(**{s.LR: "0.1"}))


def test_protocol_error_is_value_error():
    assert issubclass(ProtocolError, ValueError)


def _train_ins(cfg: dict, with_standin: bool = False) -> RecordDict:
    content = RecordDict({s.ADAPTER_RECORD: ArrayRecord(), s.CONFIG_RECORD: ConfigRecord(cfg)})
    if with_standin:
        content[s.STANDIN_RECORD] = ArrayRecord()
    return content


def test_train_ins_spec_accepts_valid_message():
    s.check_message("train-ins", _train_ins(train_config()))


def test_standin_requires_its_signature():
    with pytest.raises(ProtocolError, match="standin-manifest, standin-signature"):
        s.check_message("train-ins", _train_ins(train_config(), with_standin=True))
    cfg = train_config(**{s.STANDIN_MANIFEST: "{}", s.STANDIN_SIGNATURE: b"x"})
    s.check_message("train-ins", _train_ins(cfg, with_standin=True))
    # Without the stand-in record the stand-in signature keys are not allowed either.
    with pytest.raises(ProtocolError, match="unexpected key"):
        s.check_message("train-ins", _train_ins(cfg, with_standin=False))


def test_train_res_spec_checks_records_and_metrics():
    metrics = {name: 0 for name in s.TRAIN_RES.required_metrics}
    ok = RecordDict(
        {
            s.ADAPTER_RECORD: ArrayRecord(),
            s.UPDATE_META_RECORD: ConfigRecord({"codec": "fp16"}),
            s.METRICS_RECORD: MetricRecord(metrics),
        }
    )
    s.check_message("train-res", ok)
    assert s.NUM_EXAMPLES == "num-examples"

    del metrics[s.NUM_EXAMPLES]
    bad = RecordDict(
        {
            s.ADAPTER_RECORD: ArrayRecord(),
            s.UPDATE_META_RECORD: ConfigRecord({"codec": "fp16"}),
            s.METRICS_RECORD: MetricRecord(metrics),
        }
    )
    with pytest.raises(ProtocolError, match="metrics missing: num-examples"):
        s.check_message("train-res", bad)

    extra = RecordDict({s.ADAPTER_RECORD: ArrayRecord(), "weights": ArrayRecord()})
    with pytest.raises(ProtocolError, match="ConfigRecord|ArrayRecord"):
        s.check_message("train-res", extra)


def test_query_messages_and_unknown_kind():
    s.check_message(
        "query-ins", RecordDict({s.CONFIG_RECORD: ConfigRecord(s.new_config({s.STANDIN_HASH: "00" * 32}))})
    )
    res = s.new_config({s.STANDIN_HASH: "00" * 32, s.HAS_STANDIN: 1})
    with pytest.raises(ProtocolError, match="has-standin.*bool"):
        s.check_message("query-res", RecordDict({s.CONFIG_RECORD: ConfigRecord(res)}))
    with pytest.raises(ProtocolError, match="unknown message kind"):
        s.check_message("fit-ins", RecordDict())


def test_every_spec_config_key_has_a_declared_type():
    for spec in s.MESSAGE_SPECS.values():
        keys = spec.required_config | spec.optional_config
        for extra in spec.config_when_present.values():
            keys |= extra
        assert keys <= set(s.CONFIG_TYPES), spec.kind
