"""Token surfaces: what text each token id stands for, with whitespace markers normalised.

Byte-level BPE writes a leading space as `Ġ` (GPT-2's byte-to-unicode alphabet), SentencePiece and
Metaspace as `▁`, WordPiece marks continuations with `##`. A `Vocab` holds every id's surface as
plain text (a leading space is a real space; bytes that are not whole UTF-8 characters are kept as
surrogate escapes) and the special tokens by role, so two tokenizers can be compared token by token.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache

ROLES = ("bos", "eos", "pad", "unk", "sep", "cls", "mask")
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-unicode alphabet back to bytes (the table byte-level BPE vocabularies use)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def bytes_to_text(data: bytes) -> str:
    """UTF-8 text with undecodable bytes kept as surrogate escapes (lossless, prefix-preserving)."""
    return data.decode("utf-8", errors="surrogateescape")


def text_to_bytes(text: str) -> bytes:
    """Inverse of bytes_to_text."""
    return text.encode("utf-8", errors="surrogateescape")


@dataclass
class Vocab:
    """Surface text per token id, the ids of special tokens, and which id plays which special role."""

    surfaces: list[str]
    special_ids: set[int] = field(default_factory=set)
    roles: dict[str, int] = field(default_factory=dict)
    name: str = ""
    special_names: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.surfaces)

    def surface_bytes(self, token_id: int) -> bytes:
        """The bytes a token adds to the text (empty for special tokens)."""
        if token_id in self.special_ids or not 0 <= token_id < len(self.surfaces):
            return b""
        return text_to_bytes(self.surfaces[token_id])


def _decoder_kind(spec: dict | None) -> tuple[str, bool]:
    """('bytelevel' | 'metaspace' | 'wordpiece' | 'raw', byte_fallback) from a tokenizers decoder spec."""
    if not spec:
        return "raw", False
    kind = spec.get("type")
    if kind == "ByteLevel":
        return "bytelevel", False
    if kind == "Metaspace":
        return "metaspace", False
    if kind == "WordPiece":
        return "wordpiece", False
    if kind == "Sequence":
        parts = spec.get("decoders", [])
        fallback = any(d.get("type") == "ByteFallback" for d in parts)
        for d in parts:
            sub, _ = _decoder_kind(d)
            if sub != "raw":
                return sub, fallback
            if d.get("type") == "Replace" and "▁" in json.dumps(d.get("pattern", {}), ensure_ascii=False):
                return "metaspace", fallback
        return "raw", fallback
    return "raw", False


def _surface(token: str, kind: str, byte_fallback: bool) -> str:
    if byte_fallback and (m := _BYTE_FALLBACK.match(token)):
        return bytes_to_text(bytes([int(m.group(1), 16)]))
    if kind == "bytelevel":
        table = _byte_decoder()
        if all(c in table for c in token):
            return bytes_to_text(bytes(table[c] for c in token))
        return token
    if kind == "metaspace":
        return token.replace("▁", " ")
    if kind == "wordpiece":
        return token[2:] if token.startswith("##") else " " + token
    return token


def vocab_from_tokenizer(tokenizer, name: str = "") -> Vocab:
    """A Vocab from a Hugging Face (fast) tokenizer: surfaces normalised by its decoder type."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()).get("decoder") if backend is not None else None
    kind, fallback = _decoder_kind(spec)
    size = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special |= {i for i, t in added.items() if getattr(t, "special", True)}
    surfaces = [
        "" if i in special or t is None else _surface(t, kind, fallback) for i, t in enumerate(tokens)
    ]
    roles: dict[str, int] = {}
    for role in ROLES:
        token_id = getattr(tokenizer, f"{role}_token_id", None)
        if token_id is not None:
            roles[role] = int(token_id)
            special.add(int(token_id))
            surfaces[int(token_id)] = ""
    names = {i: tokens[i] for i in special if 0 <= i < size and tokens[i] is not None}
    return Vocab(surfaces, special, roles, name or getattr(tokenizer, "name_or_path", ""), names)
