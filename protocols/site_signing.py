"""Site-signed updates: each site signs its update's manifest; the coordinator checks it before use.

A site holds an Ed25519 key (node config `site-key`). For every train reply it signs a manifest
naming the run, the round, its node id, the SHA-256 of the update as sent (tensors and codec
metadata) and its number of examples. The coordinator knows the registered site public keys
(run-config `site-keys`) by key id, the first 16 hex digits of the SHA-256 of the raw public key.
Anything that does not verify is a `SignatureError` naming why: unsigned, unknown key, replayed
(another run or round), for another node, or tampered.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from flwr.app import ArrayRecord, ConfigRecord

from protocols.records import record_sha256
from protocols.schema import PROTOCOL_VERSION
from protocols.signing import SignatureError, canonical_manifest_bytes, load_public_key

UPDATE_FIELDS = frozenset({"kind", "run", "round", "node", "content-sha256", "num-examples", "site-key",
                           "protocol-version"})  # fmt: skip


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """The key's id: first 16 hex digits of the SHA-256 of its raw 32-byte public key."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def update_sha256(arrays: ArrayRecord, meta: ConfigRecord | Mapping[str, Any]) -> str:
    """SHA-256 over an update as sent: its tensors (wire dtypes) and its codec metadata."""
    values = {k: v.hex() if isinstance(v, bytes) else v for k, v in dict(meta).items()}
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(f"{record_sha256(arrays)}:{text}".encode()).hexdigest()


def update_manifest(run: str, server_round: int, node: int, content_sha256: str, num_examples: int,
                    key: Ed25519PrivateKey | Ed25519PublicKey) -> dict[str, Any]:  # fmt: skip
    """The manifest one site signs for one update."""
    return {"kind": "update", "run": str(run), "round": int(server_round), "node": int(node),
            "content-sha256": content_sha256, "num-examples": int(num_examples), "site-key": key_id(key),
            "protocol-version": PROTOCOL_VERSION}  # fmt: skip


def sign_update(manifest: Mapping[str, Any], key: Ed25519PrivateKey) -> tuple[str, bytes]:
    """(canonical manifest JSON, 64-byte signature) of an update manifest."""
    body = canonical_manifest_bytes(manifest)
    return body.decode("ascii"), key.sign(body)


def load_site_keys(spec: str | Iterable[str | Path]) -> dict[str, Ed25519PublicKey]:
    """Registered site public keys by key id, from a directory of *.pub files or a comma-separated list."""
    if isinstance(spec, str):
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    paths: list[Path] = []
    for item in spec:
        path = Path(item).expanduser()
        paths += sorted(path.glob("*.pub")) if path.is_dir() else [path]
    keys = {}
    for path in paths:
        if not path.is_file():
            raise SignatureError(f"site key {path} does not exist")
        pub = load_public_key(path)
        keys[key_id(pub)] = pub
    if not keys:
        raise SignatureError(f"no site public keys (*.pub) found in {', '.join(map(str, spec))}")
    return keys


def verify_update(
    manifest_json: str | None, signature: bytes | None, keys: Mapping[str, Ed25519PublicKey], *,
    run: str, server_round: int, node: int, content_sha256: str, num_examples: int,
) -> str:  # fmt: skip
    """The key id that signed this update; SignatureError (with the reason) unless it is valid for it."""
    if not manifest_json or not signature:
        raise SignatureError("unsigned update: no site signature")
    try:
        manifest = json.loads(manifest_json)
    except (TypeError, ValueError):
        raise SignatureError("update manifest is not valid JSON") from None
    if not isinstance(manifest, dict) or set(manifest) != UPDATE_FIELDS or manifest["kind"] != "update":
        raise SignatureError("malformed update manifest")
    kid = manifest["site-key"]
    if kid not in keys:
        raise SignatureError(f"update signed by an unknown site key {str(kid)[:16]!r}")
    try:
        keys[kid].verify(signature, canonical_manifest_bytes(manifest))
    except (InvalidSignature, TypeError):
        raise SignatureError(f"tampered update: the signature of site key {kid} does not verify") from None
    if manifest["run"] != run:
        raise SignatureError(f"replayed update: signed for another run ({str(manifest['run'])[:16]})")
    if manifest["round"] != server_round:
        raise SignatureError(
            f"replayed update: signed for round {manifest['round']}, this is round {server_round}"
        )
    if manifest["node"] != node:
        raise SignatureError(f"update signed for node {manifest['node']}, received from node {node}")
    if manifest["content-sha256"] != content_sha256 or manifest["num-examples"] != num_examples:
        raise SignatureError(
            f"tampered update: its content does not match the manifest site key {kid} signed"
        )
    return kid
