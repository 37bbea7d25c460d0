"""Ed25519 signatures over payload manifests (stand-ins and global adapters)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocols.schema import PROTOCOL_VERSION, ProtocolError

# Manifest fields; the signature covers all of them, so none can be swapped after signing.
CONTENT_SHA256 = "content-sha256"
KIND = "kind"
LINEAGE = "lineage"
ROUND = "round"
VERSION = "protocol-version"
MANIFEST_FIELDS = frozenset({CONTENT_SHA256, KIND, LINEAGE, ROUND, VERSION})
KINDS = frozenset({"standin", "adapter"})


class SignatureError(ProtocolError):
    """A payload is unsigned, tampered with, signed by another key, or its manifest is malformed."""


def offsite_home() -> Path:
    """This machine's Offsite directory: `$OFFSITE_HOME`, else ~/.offsite."""
    return Path(os.environ.get("OFFSITE_HOME") or "~/.offsite").expanduser()


def machine_coordinator_key_paths() -> tuple[Path, Path]:
    """(private, public) PEM paths of this machine's coordinator key, which a coordinator uses by default
    and a site on the same machine (a simulation, a rehearsal) trusts without being told."""
    keys = offsite_home() / "keys"
    return keys / "coordinator.pem", keys / "coordinator.pub"


def generate_signing_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def save_private_key(key: Ed25519PrivateKey, path: str | Path) -> Path:
    """Write an unencrypted PKCS#8 PEM private key readable by the owner only (mode 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Create with 0600 from the start so the key is never briefly world-readable.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(path, 0o600)
    return path


def save_public_key(key: Ed25519PublicKey | Ed25519PrivateKey, path: str | Path) -> Path:
    """Write the public key (of a private key, too) as SubjectPublicKeyInfo PEM."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return path


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Read a PEM Ed25519 private key written by `save_private_key`."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Read a PEM Ed25519 public key written by `save_public_key`."""
    key = serialization.load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def make_manifest(
    content_sha256: str, kind: str, lineage: str, server_round: int, protocol_version: int = PROTOCOL_VERSION
) -> dict[str, Any]:
    """A manifest dict describing one payload (hex SHA-256 of its content, "standin"/"adapter", ...)."""
    manifest = {
        CONTENT_SHA256: content_sha256,
        KIND: kind,
        LINEAGE: lineage,
        ROUND: server_round,
        VERSION: protocol_version,
    }
    check_manifest(manifest)
    return manifest


def check_manifest(manifest: Mapping[str, Any]) -> None:
    """Raise SignatureError unless the manifest has exactly the known fields with valid values."""
    if not isinstance(manifest, Mapping):
        raise SignatureError(f"manifest must be a mapping, got {type(manifest).__name__}")
    missing, extra = sorted(MANIFEST_FIELDS - set(manifest)), sorted(set(manifest) - MANIFEST_FIELDS)
    if missing or extra:
        raise SignatureError(f"malformed manifest (missing fields {missing}, unexpected fields {extra})")
    sha = manifest[CONTENT_SHA256]
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise SignatureError(f"manifest {CONTENT_SHA256!r} must be 64 lowercase hex digits, got {sha!r}")
    if manifest[KIND] not in KINDS:
        raise SignatureError(f"manifest kind must be one of {sorted(KINDS)}, got {manifest[KIND]!r}")
    if not isinstance(manifest[LINEAGE], str):
        raise SignatureError(f"manifest {LINEAGE!r} must be a string")
    for key in (ROUND, VERSION):
        value = manifest[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SignatureError(f"manifest {key!r} must be a non-negative int, got {value!r}")


def canonical_manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The exact bytes signed: sorted-key, compact, ASCII-only JSON."""
    return json.dumps(dict(manifest), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode(
        "ascii"
    )


def manifest_to_json(manifest: Mapping[str, Any]) -> str:
    """Canonical JSON string of a manifest, for a ConfigRecord value."""
    check_manifest(manifest)
    return canonical_manifest_bytes(manifest).decode("ascii")


def manifest_from_json(text: str) -> dict[str, Any]:
    """Parse and check a manifest JSON string received on the wire."""
    try:
        manifest = json.loads(text)
    except (TypeError, ValueError) as err:
        raise SignatureError(f"manifest is not valid JSON: {err}") from err
    check_manifest(manifest)
    return manifest


def sign_manifest(manifest: Mapping[str, Any], private_key: Ed25519PrivateKey) -> bytes:
    """64-byte Ed25519 signature over the canonical manifest bytes."""
    check_manifest(manifest)
    return private_key.sign(canonical_manifest_bytes(manifest))


def verify_manifest(
    manifest: Mapping[str, Any] | None,
    signature: bytes | None,
    public_key: Ed25519PublicKey,
    *,
    content_sha256: str | None = None,
    kind: str | None = None,
) -> None:
    """Raise SignatureError unless `signature` is the key's signature of `manifest`.

    With `content_sha256` / `kind`, also require the manifest to describe that content: a valid
    signature over some other payload's manifest must not vouch for this one.
    """
    if manifest is None:
        raise SignatureError("payload has no manifest: refusing an unsigned payload")
    if not signature:
        raise SignatureError("payload is unsigned (no signature): refusing to load it")
    if not isinstance(signature, bytes):
        raise SignatureError(f"signature must be bytes, got {type(signature).__name__}")
    check_manifest(manifest)
    try:
        public_key.verify(signature, canonical_manifest_bytes(manifest))
    except InvalidSignature:
        raise SignatureError(
            "signature does not match the manifest: the payload was tampered with or signed by another key"
        ) from None
    if manifest[VERSION] != PROTOCOL_VERSION:
        raise SignatureError(f"manifest protocol version {manifest[VERSION]} != {PROTOCOL_VERSION}")
    if kind is not None and manifest[KIND] != kind:
        raise SignatureError(f"manifest is for a {manifest[KIND]!r}, expected {kind!r}")
    if content_sha256 is not None and manifest[CONTENT_SHA256] != content_sha256:
        raise SignatureError(
            f"content hash {content_sha256[:12]}... does not match the signed manifest "
            f"({manifest[CONTENT_SHA256][:12]}...): payload altered or swapped"
        )
