"""Which coordinator a site trusts, and the checks every received payload must pass before use.

A site trusts one coordinator key, the first of: node_config `coordinator-key` (a PEM path),
`$OFFSITE_COORDINATOR_KEY`, or this machine's own coordinator key (`$OFFSITE_HOME/keys/coordinator.pub`,
which a coordinator on this machine makes and uses by default: so simulated sites, which have no node
config of their own, verify signatures with no setup). Every stand-in and adapter must then carry a
valid signature over a manifest naming exactly the received content's SHA-256. A site that finds no
key refuses to work (`require-signature`, default true); `require-signature=false` accepts payloads
whose content hash matches their manifest, unsigned by a key it knows, and says so.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from flwr.app import ArrayRecord, ConfigRecord, Context

from protocols import schema as S
from protocols.signing import (
    SignatureError,
    load_private_key,
    load_public_key,
    machine_coordinator_key_paths,
    manifest_from_json,
    verify_manifest,
)
from protocols.site_signing import sign_update, update_manifest, update_sha256

log = logging.getLogger("offsite.client")
_warned = False


def pinned_key_path(node_config: dict) -> Path | None:
    """Where the coordinator key this node trusts lives: node config, environment, else this machine's."""
    path = node_config.get("coordinator-key") or os.environ.get("OFFSITE_COORDINATOR_KEY")
    if path:
        return Path(str(path)).expanduser()
    machine = machine_coordinator_key_paths()[1]
    return machine if machine.is_file() else None


def pinned_key(node_config: dict) -> Ed25519PublicKey | None:
    """The coordinator's public key this node trusts, if it has one."""
    path = pinned_key_path(node_config)
    if path is None:
        return None
    if not path.is_file():
        raise SignatureError(f"coordinator-key {path} does not exist on this node")
    return load_public_key(path)


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
        try:
            verify_manifest(manifest, signature, key, content_sha256=content_sha256, kind=kind)
        except SignatureError as exc:
            raise SignatureError(f"{exc} (trusted coordinator key: {pinned_key_path(node_config)})") from None
        return
    if _truthy(node_config.get("require-signature", True)):
        raise SignatureError(
            "no coordinator key pinned on this node: set node-config coordinator-key to the coordinator's "
            "coordinator.pub (the coordinator logs its path; `offsite certs` makes one), or "
            "require-signature=false to check payload hashes only"
        )
    if not signature:
        raise SignatureError(f"{kind} is unsigned: refusing it")
    if manifest["kind"] != kind or manifest["content-sha256"] != content_sha256:
        raise SignatureError(f"{kind} content does not match its manifest: payload altered or swapped")
    if not _warned:
        log.warning(
            "require-signature=false and no coordinator-key: payload hashes are checked, signatures are not"
        )
        _warned = True


def sign_reply(
    context: Context, cfg: dict, arrays: ArrayRecord, meta: ConfigRecord, n: int
) -> ConfigRecord | None:
    """This site's signed manifest of its update (node-config `site-key`), or None on a site without a key."""
    path = context.node_config.get("site-key")
    if not path:
        return None
    key = load_private_key(Path(str(path)).expanduser())
    manifest = update_manifest(
        cfg.get(S.RUN_ID, ""), cfg[S.ROUND], context.node_id, update_sha256(arrays, meta), n, key
    )
    body, signature = sign_update(manifest, key)
    return ConfigRecord({S.UPDATE_MANIFEST: body, S.UPDATE_SIGNATURE: signature})
