"""Which coordinator a site trusts, and the checks every received payload must pass before use.

A site pins the coordinator's Ed25519 public key with node_config `coordinator-key` (a PEM path)
or `$OFFSITE_COORDINATOR_KEY`. With a pinned key, every stand-in and adapter must carry a valid
signature over a manifest naming exactly the received content's SHA-256. Without one (the usual
case in simulation, where virtual nodes have no node config of their own) the signature cannot be
checked, so only the content hash is compared with the manifest, and a warning says so; set
`require-signature=true` in node_config to refuse that mode.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocols.signing import SignatureError, load_public_key, manifest_from_json, verify_manifest

log = logging.getLogger("offsite.client")
_warned = False


def pinned_key(node_config: dict) -> Ed25519PublicKey | None:
    """The coordinator's public key this node trusts, if one is configured."""
    path = node_config.get("coordinator-key") or os.environ.get("OFFSITE_COORDINATOR_KEY")
    return load_public_key(Path(str(path)).expanduser()) if path else None


def _truthy(value) -> bool:
    return value is True or str(value).lower() in ("1", "true", "yes")


def check_payload(
    node_config: dict, manifest_json: str, signature: bytes, content_sha256: str, kind: str
) -> None:
    """Raise SignatureError unless the payload is acceptable under this node's trust policy."""
    global _warned
    key = pinned_key(node_config)
    manifest = manifest_from_json(manifest_json)
    if key is not None:
        verify_manifest(manifest, signature, key, content_sha256=content_sha256, kind=kind)
        return
    if _truthy(node_config.get("require-signature", False)):
        raise SignatureError("require-signature is set but no coordinator-key is pinned on this node")
    if not signature:
        raise SignatureError(f"{kind} is unsigned: refusing it")
    if manifest["kind"] != kind or manifest["content-sha256"] != content_sha256:
        raise SignatureError(f"{kind} content does not match its manifest: payload altered or swapped")
    if not _warned:
        log.warning("no coordinator-key pinned: payload hashes are checked, signatures are not")
        _warned = True
