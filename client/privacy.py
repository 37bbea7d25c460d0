"""Client-side clipping of an adapter delta with Flower's own DP helper (central DP, client clipping).

Flower's `fixedclipping_mod` clips `reply - instruction` parameters, which assumes both carry full
models; an Offsite site holds the delta itself before encoding it, so it calls the same helper
(`clip_inputs_inplace`, FlatClip of McMahan et al. 2018) on the delta directly.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.supercore.differential_privacy import clip_inputs_inplace, get_norm


def clip_update(
    delta: dict[str, torch.Tensor], clipping_norm: float
) -> tuple[dict[str, torch.Tensor], float]:
    """The delta scaled to global L2 norm <= clipping_norm (0: unchanged), and its norm before clipping."""
    names = sorted(delta)
    arrays = [delta[k].detach().float().cpu().numpy().astype(np.float64) for k in names]
    norm = get_norm(arrays)
    if clipping_norm and norm > clipping_norm:
        clip_inputs_inplace(arrays, clipping_norm)
        delta = {k: torch.from_numpy(a).float() for k, a in zip(names, arrays, strict=True)}
    return delta, norm
