"""Signed payloads through the real ClientApp: tampered, unsigned or wrongly signed ones are refused.

One federation round, six sites pinning the coordinator's key; a man in the middle edits the train
message of five of them, one attack each. The honest site trains, the round completes with it, and
an attacked site refuses the payload before loading anything (a refused stand-in is not cached).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from client.cache import StandinCache
from protocols import schema as S
from protocols.signing import generate_signing_key, make_manifest, manifest_to_json, sign_manifest
from protocols.tensors import array_record_to_state_dict

from .harness import run, statuses


def _flip_byte(record: ArrayRecord) -> ArrayRecord:
    """A copy of the record with one byte of its largest array changed (the original is shared)."""
    arrays = {k: np.array(a.numpy(), copy=True) for k, a in record.items()}
    big = max(arrays, key=lambda k: arrays[k].nbytes)
    raw = arrays[big].reshape(-1).view(np.uint8)
    raw[-1] ^= 0x01
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def tamper_standin_bytes(msg: Message) -> None:
    """Flip one byte of the stand-in's weights; the manifest and signature stay the coordinator's."""
    msg.content[S.STANDIN_RECORD] = _flip_byte(msg.content[S.STANDIN_RECORD])


def tamper_standin_manifest(msg: Message) -> None:
    """Rewrite the signed stand-in manifest (another lineage) without re-signing it."""
    cfg = msg.content[S.CONFIG_RECORD]
    manifest = json.loads(cfg[S.STANDIN_MANIFEST])
    manifest["lineage"] = "0" * 64
    cfg[S.STANDIN_MANIFEST] = manifest_to_json(manifest)


def unsign_standin(msg: Message) -> None:
    """Strip the stand-in's manifest and signature (the bytes alone are sent)."""
    cfg = msg.content[S.CONFIG_RECORD]
    del cfg[S.STANDIN_SIGNATURE], cfg[S.STANDIN_MANIFEST]


def tamper_adapter(msg: Message) -> None:
    """Change one adapter value (the global adapter an attacker wants the site to train from)."""
    msg.content[S.ADAPTER_RECORD] = _flip_byte(msg.content[S.ADAPTER_RECORD])


def resign_adapter_with_other_key(msg: Message) -> None:
    """Replace the adapter by the attacker's, with a valid manifest signed by the attacker's key."""
    record = _flip_byte(msg.content[S.ADAPTER_RECORD])
    msg.content[S.ADAPTER_RECORD] = record
    from protocols.hashing import hash_state_dict

    sha = hash_state_dict(array_record_to_state_dict(record, dtype=None))
    cfg = msg.content[S.CONFIG_RECORD]
    manifest = make_manifest(sha, "adapter", json.loads(cfg[S.ADAPTER_MANIFEST])["lineage"], cfg[S.ROUND])
    cfg[S.ADAPTER_MANIFEST] = manifest_to_json(manifest)
    cfg[S.ADAPTER_SIGNATURE] = sign_manifest(manifest, generate_signing_key())


ATTACKS = {
    1001: (tamper_standin_bytes, "refusing"),
    1002: (tamper_standin_manifest, "signature does not match"),
    1003: (unsign_standin, "missing required key(s): standin-manifest, standin-signature"),
    1004: (tamper_adapter, "does not match the signed manifest"),
    1005: (resign_adapter_with_other_key, "signature does not match"),
}


def test_tampered_unsigned_and_wrong_key_payloads_are_refused(quick_run, pinned_key, tmp_path):
    private, public = pinned_key
    overrides = {**quick_run, "signing-key": private, "clients-per-round": 6}
    report, _ = run(
        overrides,
        tmp_path,
        n=6,
        tamper={node: attack for node, (attack, _) in ATTACKS.items()},
        node_extra={"coordinator-key": public, "require-signature": True},
    )
    rows = statuses(report)
    assert rows[1000][0] == "ok"
    for node, (_, reason) in ATTACKS.items():
        status, why = rows[node]
        assert status == "failed" and reason in why, (node, status, why)
        assert "SignatureError" in why or "ProtocolError" in why
    rnd = report["rounds"][0]
    assert rnd["updated"] and rnd["train"]["clients"] == 1  # the round went on with the honest site
    digest = report["standin"]["hash"]
    # A refused stand-in never reaches the cache; a refused adapter is refused after a good stand-in.
    held = {i: StandinCache(tmp_path / f"cache-{i}").has(digest) for i in range(6)}
    assert held == {0: True, 1: False, 2: False, 3: False, 4: True, 5: True}


def test_sites_on_the_coordinators_machine_verify_signatures_with_no_setup(quick_run, tmp_path, caplog):
    from protocols.signing import machine_coordinator_key_paths

    report, _ = run({**quick_run, "clients-per-round": 2}, tmp_path, n=2)
    assert all(status == "ok" for status, _ in statuses(report).values())
    private, public = machine_coordinator_key_paths()
    run_pub = Path(report["run_dir"]) / "keys" / "coordinator.pub"
    assert private.is_file() and public.read_bytes() == run_pub.read_bytes()
    assert "signatures are not" not in caplog.text  # signatures were checked, not only hashes


def test_a_site_with_no_coordinator_key_refuses_and_names_the_key(
    quick_run, pinned_key, tmp_path, monkeypatch
):
    monkeypatch.setenv("OFFSITE_HOME", str(tmp_path / "empty-home"))  # a remote site: no key of its own
    overrides = {**quick_run, "signing-key": pinned_key[0], "clients-per-round": 2}
    report, _ = run(overrides, tmp_path, n=2)
    for status, why in statuses(report).values():
        assert status == "failed" and "no coordinator key pinned" in why and "coordinator-key" in why
    relaxed, _ = run(
        {**overrides, "run-name": "hash-only"}, tmp_path, n=2, node_extra={"require-signature": False}
    )
    assert all(status == "ok" for status, _ in statuses(relaxed).values())
