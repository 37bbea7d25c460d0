"""Site-signed updates: only updates signed by a registered site key, for this run, round and node,
are merged; unsigned, unknown-key, tampered and replayed ones are dropped with their reason, and the
signed lineage names the site key behind every merged update."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import Context, Message

from client.client_app import app as client_app
from coordinator.config import ConfigError, FederationConfig
from coordinator.federation.lineage import verify_lineage
from coordinator.federation.loop import run_federation
from protocols import codecs
from protocols.signing import (
    SignatureError,
    generate_signing_key,
    load_public_key,
    save_private_key,
    save_public_key,
)
from protocols.site_signing import key_id, sign_update, update_manifest, update_sha256, verify_update

from .harness import TamperingGrid, statuses
from .poison import scaled_update


def _site_keys(root: Path, n: int) -> list[tuple[Path, Path]]:
    pairs = []
    for i in range(n):
        key = generate_signing_key()
        pairs.append(
            (save_private_key(key, root / f"site-{i}.pem"), save_public_key(key, root / f"pub-{i}.pub"))
        )
    return pairs


def _registered(root: Path, pairs: list[tuple[Path, Path]], which: list[int]) -> Path:
    folder = root / "registered"
    folder.mkdir()
    for i in which:
        (folder / f"site-{i}.pub").write_bytes(pairs[i][1].read_bytes())
    return folder


def _replaying(site: int):
    """A ClientApp callable: partition `site` sends its round-1 train reply again in round 2."""
    saved: dict[str, Message] = {}

    def app(message: Message, context: Context) -> Message:
        reply = client_app(message, context)
        if message.metadata.message_type != "train" or int(context.node_config["partition-id"]) != site:
            return reply
        if "first" not in saved:
            saved["first"] = reply
            return reply
        reply.content = saved["first"].content  # the old, validly signed update, replayed
        return reply

    return app


def test_unsigned_unknown_tampered_and_replayed_updates_are_dropped(quick_run, pinned_key, tmp_path):
    private, public = pinned_key
    pairs = _site_keys(tmp_path, 5)
    folder = _registered(tmp_path, pairs, [0, 3, 4])  # site 1's key is not registered; site 2 has none
    overrides = {**quick_run, "signing-key": private, "site-keys": str(folder), "rounds": 2,
                 "clients-per-round": 5}  # fmt: skip
    cfg = FederationConfig.from_run_config(overrides)
    nodes = {1000 + i: {"partition-id": i, "num-partitions": 5, "cache-dir": str(tmp_path / f"cache-{i}"),
                        "coordinator-key": public, **({"site-key": str(pairs[i][0])} if i != 2 else {})}
             for i in range(5)}  # fmt: skip
    tamper_site_3 = scaled_update(2.0)  # changed after signing: the manifest no longer matches

    def client(message: Message, context: Context) -> Message:
        reply = _replay(message, context)
        if message.metadata.message_type == "train" and int(context.node_config["partition-id"]) == 3:
            tamper_site_3(reply)
        return reply

    _replay = _replaying(4)
    report = run_federation(TamperingGrid(client, nodes, cfg.to_run_config()), cfg)
    first, second = statuses(report, 0), statuses(report, 1)
    assert first[1000][0] == first[1004][0] == "ok"
    assert first[1001] == ("dropped", first[1001][1]) and "unknown site key" in first[1001][1]
    assert first[1002][0] == "dropped" and "unsigned update" in first[1002][1]
    assert first[1003][0] == "dropped" and "tampered update" in first[1003][1]
    assert second[1004][0] == "dropped" and "signed for round 1, this is round 2" in second[1004][1]
    assert second[1000][0] == "ok" and report["rounds"][1]["updated"]  # the round goes on
    assert report["rounds"][0]["rejected"] == 3 and report["rounds"][1]["rejected"] == 4
    lineage = verify_lineage(Path(report["run_dir"]), load_public_key(public))
    ids = {i: key_id(load_public_key(pairs[i][1])) for i in range(5)}
    assert {(u["node"], u["site_key"]) for u in lineage[0]["updates"]} == {(1000, ids[0]), (1004, ids[4])}
    assert [(u["node"], u["site_key"]) for u in lineage[1]["updates"]] == [(1000, ids[0])]


def _signed(key, run="run-a", rnd=2, node=7, n=10):
    arrays, meta = codecs.to_records(codecs.encode({"w": __import__("torch").ones(3)}, "fp16"))
    sha = update_sha256(arrays, meta)
    body, sig = sign_update(update_manifest(run, rnd, node, sha, n, key), key)
    return body, sig, sha


def test_update_manifest_checks_each_field():
    key, other = generate_signing_key(), generate_signing_key()
    keys = {key_id(key): key.public_key()}
    body, sig, sha = _signed(key)
    good = {"run": "run-a", "server_round": 2, "node": 7, "content_sha256": sha, "num_examples": 10}
    assert verify_update(body, sig, keys, **good) == key_id(key)
    cases = [
        ((None, None, keys, good), "unsigned update"),
        ((*_signed(other)[:2], keys, good), "unknown site key"),
        ((body, sig[:-1] + bytes([sig[-1] ^ 1]), keys, good), "tampered update"),
        ((body, sig, keys, {**good, "run": "run-b"}), "signed for another run"),
        ((body, sig, keys, {**good, "server_round": 3}), "signed for round 2, this is round 3"),
        ((body, sig, keys, {**good, "node": 8}), "signed for node 7, received from node 8"),
        ((body, sig, keys, {**good, "num_examples": 11}), "content does not match"),
        (("{", sig, keys, good), "not valid JSON"),
    ]
    for (b, s, k, where), reason in cases:
        with pytest.raises(SignatureError, match=reason):
            verify_update(b, s, k, **where)


def test_site_keys_are_checked_before_the_run(quick_run, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        FederationConfig.from_run_config({**quick_run, "site-keys": str(tmp_path / "nope.pub")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no site public keys"):
        FederationConfig.from_run_config({**quick_run, "site-keys": str(tmp_path / "empty")})
    (tmp_path / "bad.pub").write_text("not a key")
    with pytest.raises(ConfigError, match="site-keys"):
        FederationConfig.from_run_config({**quick_run, "site-keys": str(tmp_path / "bad.pub")})
    pub = save_public_key(generate_signing_key(), tmp_path / "ok.pub")
    with pytest.raises(ConfigError, match="masked sum"):
        FederationConfig.from_run_config({**quick_run, "site-keys": str(pub), "secure-aggregation": True})
