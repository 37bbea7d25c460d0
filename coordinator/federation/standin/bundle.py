"""The stand-in a run ships to sites, whatever its kind: built or loaded, signed, bundled for the wire."""

from __future__ import annotations

import logging
import shutil
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ArrayRecord
from torch import nn

from coordinator.config import FederationConfig
from coordinator.federation.standin import STANDIN_KINDS
from emulator.emulator import MANIFEST, Emulator, load_emulator, read_manifest, state_dict_hash
from protocols.hashing import hash_directory
from protocols.signing import (
    generate_signing_key,
    load_private_key,
    machine_coordinator_key_paths,
    make_manifest,
    manifest_to_json,
    save_private_key,
    save_public_key,
    sign_manifest,
)
from protocols.tensors import directory_to_array_record

log = logging.getLogger("offsite.coordinator")


@dataclass
class StandIn:
    """A saved emulator directory addressed by its SHA-256, plus its signed manifest."""

    directory: Path
    hash: str
    manifest_json: str
    signature: bytes

    @cached_property
    def record(self) -> ArrayRecord:
        """The stand-in's files as one ArrayRecord (Flower chunks it on the wire)."""
        return directory_to_array_record(self.directory)

    @cached_property
    def nbytes(self) -> int:
        """Bytes the stand-in record puts on the wire."""
        return int(self.record.count_bytes())

    def load(self) -> Emulator:
        """The emulator exactly as clients get it (hash-verified, float32)."""
        return load_emulator(self.directory, verify=True)


def signing_key(cfg: FederationConfig, run_dir: Path) -> Ed25519PrivateKey:
    """The coordinator's Ed25519 key: `signing-key`, a run's own from before, else this machine's.

    This machine's key ($OFFSITE_HOME/keys/coordinator.pem, made once) is the one sites on the same
    machine trust by default, so a simulation checks signatures with no setup; its public half is
    copied to run_dir/keys/coordinator.pub for remote sites to pin.
    """
    if cfg.signing_key:
        return load_private_key(Path(cfg.signing_key).expanduser())
    own = run_dir / "keys" / "coordinator.pem"
    if own.exists():
        return load_private_key(own)
    private, public = machine_coordinator_key_paths()
    if private.exists():
        key = load_private_key(private)
    else:
        key = generate_signing_key()
        save_private_key(key, private)
        save_public_key(key, public)
        log.info("new coordinator signing key %s", private)
    save_public_key(key, run_dir / "keys" / "coordinator.pub")
    log.info("coordinator signing key %s; remote sites pin %s", private, run_dir / "keys" / "coordinator.pub")
    return key


def sign(
    key: Ed25519PrivateKey, content_sha256: str, kind: str, lineage: str, server_round: int
) -> tuple[str, bytes]:
    """(manifest JSON, signature) for one payload."""
    manifest = make_manifest(content_sha256, kind, lineage, server_round)
    return manifest_to_json(manifest), sign_manifest(manifest, key)


def prepare_standin(
    cfg: FederationConfig, full: nn.Module, tokenizer, run_dir: Path, key: Ed25519PrivateKey
) -> StandIn:
    """The run's stand-in under run_dir/standin: kept if present (resume), else copied or derived."""
    target = run_dir / "standin"
    if not (target / MANIFEST).exists():
        tmp = run_dir / f".standin-{uuid.uuid4().hex}"
        if cfg.method == "saved":
            shutil.copytree(Path(cfg.emulator).expanduser(), tmp)
            source = read_manifest(tmp).source_hash
            if source != state_dict_hash(full):
                log.warning(
                    "the saved emulator was derived from other weights than %s (source hash differs)",
                    cfg.model,
                )
        else:
            emu = STANDIN_KINDS[cfg.standin].impl().build(cfg, full, tokenizer)
            emu.model.to(getattr(torch, cfg.standin_dtype))  # the frozen middle travels in fp16 by default
            emu.save(tmp)
        tmp.rename(target)
    manifest = read_manifest(target)
    digest = hash_directory(target, exclude={MANIFEST})
    if digest != manifest.emulator_hash:
        raise ValueError(f"stand-in at {target} does not match its manifest hash; delete it to re-derive")
    manifest_json, signature = sign(key, digest, "standin", lineage=manifest.source_hash, server_round=0)
    return StandIn(target, digest, manifest_json, signature)
