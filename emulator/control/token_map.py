"""PM-MinED token maps: each target-vocabulary token to a control-vocabulary token, or to none.

For a target token with surface text t (whitespace markers normalised, see emulator.control.vocab):
1. exact: a control token with surface t (the lowest id if several);
2. approximate: among control tokens c that are a prefix of t, or that t is a prefix of, the one
   with minimum Levenshtein distance to t, ties to the lowest id; a control token of whitespace
   alone is a prefix candidate only for a target token that is itself all whitespace (as in CMC's
   reference mapping);
3. otherwise unmapped (the port gives it shift 0).
Special tokens are matched by role (bos/eos/pad/unk/...), then by their literal text, never by id.

When one string is a prefix of the other, their Levenshtein distance is exactly the difference of
their lengths (that many insertions are needed and suffice). So the minimum is reached by the longest
control prefix of t or by the shortest control extension of t, and both are dictionary look-ups:
O(total surface length) for the whole vocabulary instead of a distance matrix. A test checks this
against a brute-force Levenshtein search.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from emulator.control.vocab import Vocab

UNMAPPED, EXACT, APPROX, SPECIAL = 0, 1, 2, 3
_KIND_NAMES = {UNMAPPED: "unmapped", EXACT: "exact", APPROX: "approximate", SPECIAL: "special"}


@dataclass
class TokenMap:
    """index[j] = control id for target id j (-1: unmapped); kind[j] says how it was matched."""

    index: torch.Tensor  # (target_vocab,) int64
    kind: torch.Tensor  # (target_vocab,) uint8: UNMAPPED / EXACT / APPROX / SPECIAL
    control_size: int
    stats: dict

    @property
    def mapped(self) -> torch.Tensor:
        """Boolean (target_vocab,) mask of mapped target tokens."""
        return self.index >= 0

    @property
    def is_identity(self) -> bool:
        """Whether the map sends every target id to the same control id (same vocabulary)."""
        n = self.index.numel()
        return n == self.control_size and bool(torch.equal(self.index, torch.arange(n)))

    def sized(self, target_logits_dim: int) -> torch.Tensor:
        """The index padded with -1 (or cut) to a model's logits width, which may exceed its tokenizer."""
        n = self.index.numel()
        if target_logits_dim <= n:
            return self.index[:target_logits_dim]
        return torch.cat([self.index, torch.full((target_logits_dim - n,), -1, dtype=torch.long)])

    def save(self, path: str | Path) -> Path:
        """Write one safetensors file; its metadata holds the coverage statistics as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"stats": json.dumps(self.stats), "control_size": str(self.control_size)}
        save_file(
            {"index": self.index.contiguous(), "kind": self.kind.contiguous()}, str(path), metadata=meta
        )
        return path


def load_token_map(path: str | Path) -> TokenMap:
    """Read a map written by TokenMap.save."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no token map at {path}")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if "stats" not in meta:
        raise ValueError(f"{path} is not a token map (no coverage statistics in its metadata)")
    tensors = load_file(str(path))
    return TokenMap(tensors["index"], tensors["kind"], int(meta["control_size"]), json.loads(meta["stats"]))


def _control_tables(control: Vocab) -> tuple[dict[str, int], dict[str, tuple[int, int]]]:
    """Exact index (surface -> lowest id) and, per proper prefix, the shortest extension (len, id)."""
    exact: dict[str, int] = {}
    extension: dict[str, tuple[int, int]] = {}
    for cid, s in enumerate(control.surfaces):
        if not s or cid in control.special_ids:
            continue
        exact.setdefault(s, cid)
        n = len(s)
        for k in range(1, n):
            best = extension.get(s[:k])
            if best is None or (n, cid) < best:
                extension[s[:k]] = (n, cid)
    return exact, extension


def match_token(
    surface: str, exact: dict[str, int], extension: dict[str, tuple[int, int]]
) -> tuple[int, int]:
    """(control id, kind) for one surface: exact, else the PM-MinED choice, else (-1, UNMAPPED)."""
    if surface in exact:
        return exact[surface], EXACT
    best: tuple[int, int] | None = None  # (distance, id)
    # As CMC's own mapping does, a bare-whitespace control token is never a prefix candidate for a
    # target token with visible text (' =' would otherwise take the lone space's shift).
    visible = not surface.isspace()
    for k in range(len(surface) - 1, 0, -1):  # longest control prefix first: smallest distance
        prefix = surface[:k]
        cid = exact.get(prefix)
        if cid is not None and not (visible and prefix.isspace()):
            best = (len(surface) - k, cid)
            break
    ext = extension.get(surface)
    if ext is not None:
        cand = (ext[0] - len(surface), ext[1])
        best = cand if best is None or cand < best else best
    return (best[1], APPROX) if best else (-1, UNMAPPED)


def build_token_map(target: Vocab, control: Vocab) -> TokenMap:
    """Map every target token to a control token by PM-MinED; stats give shares and build seconds."""
    start = time.perf_counter()
    exact, extension = _control_tables(control)
    control_specials = {name: i for i, name in control.special_names.items()}
    role_of = {i: r for r, i in target.roles.items()}
    index = torch.full((len(target),), -1, dtype=torch.long)
    kind = torch.zeros(len(target), dtype=torch.uint8)
    for tid, surface in enumerate(target.surfaces):
        if tid in target.special_ids:
            role = role_of.get(tid)
            if role is not None and role in control.roles:
                index[tid], kind[tid] = control.roles[role], SPECIAL
            elif target.special_names.get(tid) in control_specials:
                index[tid], kind[tid] = control_specials[target.special_names[tid]], SPECIAL
            continue
        if not surface:
            continue
        cid, how = match_token(surface, exact, extension)
        index[tid], kind[tid] = cid, how
    counts = {name: int((kind == k).sum()) for k, name in _KIND_NAMES.items()}
    n = len(target)
    stats = {
        "target": target.name,
        "control": control.name,
        "target_vocab": n,
        "control_vocab": len(control),
        **counts,
        **{f"{name}_share": counts[name] / n for name in counts},
        "special_roles_matched": sorted(r for r in target.roles if r in control.roles),
        "seconds": time.perf_counter() - start,
    }
    return TokenMap(index, kind, len(control), stats)


def identity_map(size: int) -> TokenMap:
    """The map of a vocabulary onto itself."""
    stats = {"target_vocab": size, "control_vocab": size, "exact": size, "exact_share": 1.0,
             "approximate": 0, "approximate_share": 0.0, "unmapped": 0, "unmapped_share": 0.0}  # fmt: skip
    return TokenMap(torch.arange(size), torch.full((size,), EXACT, dtype=torch.uint8), size, stats)


def map_tokenizers(target_tokenizer, control_tokenizer) -> TokenMap:
    """The identity when both tokenizers have the same vocabulary, else a PM-MinED map."""
    if _same_vocab(target_tokenizer, control_tokenizer):
        return identity_map(len(control_tokenizer))
    from emulator.control.vocab import vocab_from_tokenizer

    return build_token_map(vocab_from_tokenizer(target_tokenizer), vocab_from_tokenizer(control_tokenizer))


def _same_vocab(a, b) -> bool:
    return len(a) == len(b) and a.get_vocab() == b.get_vocab()
