"""Aggregation and merging (docs/architecture.md#aggregation-and-dare): delta merges, exact LoRA, robust, DP.

`registry` names every method; `tensors` and `lora` depend on torch and peft only, so they can be
tested and reused without Flower or the model code.
"""

from coordinator.aggregation.lora import (
    dense_delta,
    dense_mean,
    ffa_mean,
    lora_modules,
    low_rank_factors,
    naive_factor_mean,
    product_space_mean,
)
from coordinator.aggregation.tensors import (
    check_deltas,
    dare_drop,
    dare_keep_mask,
    dare_linear,
    dare_ties,
    elect_sign_mask,
    magnitude_prune,
    normalise_weights,
    task_arithmetic,
    ties,
    trim,
    weighted_disjoint_mean,
    weighted_mean,
)

__all__ = [
    "check_deltas",
    "dare_drop",
    "dare_keep_mask",
    "dare_linear",
    "dare_ties",
    "dense_delta",
    "dense_mean",
    "elect_sign_mask",
    "ffa_mean",
    "lora_modules",
    "low_rank_factors",
    "magnitude_prune",
    "naive_factor_mean",
    "normalise_weights",
    "product_space_mean",
    "task_arithmetic",
    "ties",
    "trim",
    "weighted_disjoint_mean",
    "weighted_mean",
]
