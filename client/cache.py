"""On-disk, content-addressed stand-in cache: `<cache-dir>/<sha256>/` holds one verified emulator.

In deployment every message may run in a fresh process, so the stand-in lives on disk; a small
in-process memo avoids re-reading it while a process (e.g. a simulation actor) stays alive.
Entries are written to a temporary directory, verified against the expected hash, then renamed
into place, so a crash or a concurrent writer never leaves a half-written entry under its hash.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import uuid
from pathlib import Path

from flwr.app import ArrayRecord

from emulator.emulator import MANIFEST, Emulator, load_emulator, read_manifest
from protocols.hashing import hash_directory
from protocols.schema import ProtocolError
from protocols.tensors import array_record_to_directory

DEFAULT_CACHE_DIR = Path("~/.cache/offsite/standins")
_HASH = re.compile(r"^[0-9a-f]{64}$")
_MEMO: dict[tuple[str, str], Emulator] = {}
_MEMO_SIZE = 2


class StandinMissing(LookupError):
    """The message names a stand-in this node does not hold (and did not carry it)."""


def cache_dir(node_config: dict) -> Path:
    """node_config 'cache-dir', else $OFFSITE_CACHE_DIR, else ~/.cache/offsite/standins."""
    value = node_config.get("cache-dir") or os.environ.get("OFFSITE_CACHE_DIR") or DEFAULT_CACHE_DIR
    return Path(str(value)).expanduser()


class StandinCache:
    """Verified emulators by hash under one root directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, digest: str) -> Path:
        """Directory of one entry (the hash must be 64 lowercase hex digits)."""
        if not isinstance(digest, str) or not _HASH.match(digest):
            raise ProtocolError(f"stand-in hash must be 64 lowercase hex digits, got {digest!r}")
        return self.root / digest

    def has(self, digest: str) -> bool:
        """Whether a complete entry for this hash exists (its manifest names the hash)."""
        path = self.path(digest)
        try:
            return read_manifest(path).emulator_hash == digest
        except (FileNotFoundError, ValueError, TypeError):
            return False

    def store(self, record: ArrayRecord, digest: str) -> Path:
        """Unpack a stand-in bundle, check it hashes to `digest`, and move it into place."""
        target = self.path(digest)
        if self.has(digest):
            return target
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{digest[:16]}-{uuid.uuid4().hex}"
        try:
            array_record_to_directory(record, tmp)
            actual = hash_directory(tmp, exclude={MANIFEST})
            declared = read_manifest(tmp).emulator_hash
            if actual != digest or declared != digest:
                raise ProtocolError(
                    f"received stand-in hashes to {actual[:12]}… (manifest says {declared[:12]}…), "
                    f"but the message names {digest[:12]}…: refusing it"
                )
            try:
                tmp.rename(target)
            except OSError:
                if not self.has(digest):  # someone else's complete copy is fine; anything else is not
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return target

    def load(self, digest: str) -> Emulator:
        """A private copy of the cached emulator (hash-verified on first load in this process)."""
        key = (str(self.root), digest)
        if key not in _MEMO:
            if not self.has(digest):
                raise StandinMissing(f"stand-in {digest} is not in the cache at {self.root}")
            emu = load_emulator(self.path(digest), verify=True)
            while len(_MEMO) >= _MEMO_SIZE:
                _MEMO.pop(next(iter(_MEMO)))
            _MEMO[key] = emu
        return copy.deepcopy(_MEMO[key])
