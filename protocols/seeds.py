"""Seeds and masks both sides must derive alike: per-site seeds, node samples, DARE keep-masks.

Every seed is a prefix of a SHA-256 digest of a ':'-joined string, so a site and the coordinator
(or two processes of a merge) draw the same numbers from the same run seed and names, whatever
their platform or Python hash seed.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence

import torch

SEED_BITS = 63  # DARE seeds travel as int64 in a ConfigRecord


def digest_seed(*parts: object, bits: int = SEED_BITS) -> int:
    """An unsigned `bits`-bit seed: the first 8 bytes (little-endian) of SHA-256(':'.join(parts))."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << bits) - 1)


def site_seed(seed: int, server_round: int, site: object) -> int:
    """A per-site, per-round 31-bit seed (shuffling, dropout and DARE masks) from the run seed."""
    return digest_seed("offsite", seed, server_round, site, bits=31)


def round_sampler(seed: int, server_round: int) -> random.Random:
    """The generator that samples a round's sites: the same nodes for the same seed and round."""
    return random.Random(f"offsite:{seed}:{server_round}")


def sample_nodes(seed: int, server_round: int, nodes: Sequence[int], k: int) -> list[int]:
    """A seeded sample of min(k, len(nodes)) node ids, sorted."""
    return sorted(round_sampler(seed, server_round).sample(sorted(nodes), min(k, len(nodes))))


def dp_noise_seed(seed: int, server_round: int) -> int:
    """The 32-bit seed of a round's DP noise (numpy's legacy seeding takes 32 bits)."""
    return digest_seed("dp-noise", seed, server_round, bits=32)


def dare_tensor_seed(seed: int, name: str) -> int:
    """Per-tensor DARE generator seed: 63 bits of SHA-256('<seed>:<name>')."""
    return digest_seed(seed, name)


def merge_client_seed(seed: int, index: int) -> int:
    """Independent 63-bit DARE seed for client `index` of a merge seeded with `seed`."""
    return digest_seed(seed, "client", index)


def dare_mask(seed: int, name: str, shape: Sequence[int] | int, p: float) -> torch.Tensor:
    """Bool keep-mask of `shape` (CPU, row-major draws), each entry kept with probability 1-p."""
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    g = torch.Generator(device="cpu").manual_seed(dare_tensor_seed(seed, name))
    return (torch.rand(math.prod(dims), generator=g, dtype=torch.float32) >= p).reshape(dims)
