"""Offline merge of tuned adapters into one model (`offsite merge`), DARE's "absorbing abilities" use.

Each source is an adapter a run produced (a run directory holding `adapter.safetensors` and
`config.json`, or a bare `.safetensors` file): whole adapter blocks (`blocks.{i}.{param}`) or LoRA
(`blocks.{i}.{module}.lora_A/B.weight`). Each becomes a *task vector* on the base model's block
parameters: whole blocks minus the base model's blocks, or the dense LoRA product s·B·A. The
vectors are merged with one of the `delta` methods of `coordinator.aggregation.registry` and added to the base model.

The config file is YAML shaped like mergekit's:

    merge_method: dare_ties            # fedavg|task_arithmetic|magnitude_prune|ties|dare_linear|dare_ties
    base_model: zoo:base               # or a local Hugging Face checkpoint directory
    models:
      - model: runs/wn-category        # run directory or adapter .safetensors
        parameters: {weight: 1.0}
      - model: runs/wn-pos
        parameters: {weight: 1.0}
    parameters: {density: 0.5, p: 0.5, seed: 0, normalize: false, lambda: 1.0}
    evaluate: [wn-category, wn-pos]    # optional: tasks to score the merged model on

Weights are normalised (a weighted mean of task vectors) when `normalize` is true; with false
(the default, as in task arithmetic) the merged vector is scaled by Σ weights, so two unit-weight
adapters add up. `lambda` scales the result once more.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from coordinator.aggregation import registry
from coordinator.aggregation.lora import dense_delta
from emulator.blocks import get_blocks

LORA_SCALING = 2.0  # emulator.plugin.add_lora uses alpha = 2·rank, so s = alpha/rank = 2
# Merge-file parameters beyond the methods' own: `normalize` the weights, scale the merged delta by `lambda`.
_EXTRA_PARAMS = {"normalize", "lambda"}
_DEFAULTS = {"density": 0.5, "p": 0.5, "seed": 0}


def _methods() -> tuple[str, ...]:
    return registry.names("delta")


def _global_params() -> set[str]:
    return {p for m in _methods() for p in registry.get(m).params} | _EXTRA_PARAMS


_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


class MergeConfigError(ValueError):
    """The merge config is malformed or names something that does not exist."""


@dataclass(frozen=True)
class MergeSource:
    """One adapter to merge and its weight."""

    path: Path
    weight: float = 1.0


@dataclass(frozen=True)
class MergeSpec:
    """A parsed merge config."""

    method: str
    base_model: str
    sources: list[MergeSource]
    params: dict[str, Any] = field(default_factory=dict)
    evaluate: list[str] = field(default_factory=list)

    @property
    def aggregator_params(self) -> dict[str, Any]:
        """The parameters the chosen aggregator takes, with defaults filled in."""
        return {k: self.params.get(k, _DEFAULTS[k]) for k in registry.get(self.method).params}


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MergeConfigError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def parse_spec(data: Any, root: Path = Path(".")) -> MergeSpec:
    """Check a merge config (already loaded from YAML); relative paths resolve against `root`."""
    if not isinstance(data, dict):
        raise MergeConfigError("the merge config must be a mapping with merge_method, base_model and models")
    unknown = sorted(set(data) - {"merge_method", "base_model", "models", "parameters", "evaluate"})
    if unknown:
        raise MergeConfigError(f"unknown key(s) {unknown}")
    method = data.get("merge_method")
    if method not in _methods():
        raise MergeConfigError(f"merge_method must be one of {', '.join(_methods())}; got {method!r}")
    base = data.get("base_model")
    if not isinstance(base, str) or not base:
        raise MergeConfigError("base_model must be 'zoo:<name>' or a checkpoint directory")
    models = data.get("models")
    if not isinstance(models, list) or len(models) < 2:
        raise MergeConfigError("models must list at least two adapters")
    sources = []
    for i, entry in enumerate(models):
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise MergeConfigError(f"models[{i}] must be a mapping with a 'model' path")
        extra = sorted(set(entry) - {"model", "parameters"}) + sorted(
            set(entry.get("parameters") or {}) - {"weight"}
        )
        if extra:
            raise MergeConfigError(f"models[{i}] has unknown key(s) {extra}")
        weight = _number(f"models[{i}].parameters.weight", (entry.get("parameters") or {}).get("weight", 1.0))
        if weight < 0:
            raise MergeConfigError(f"models[{i}].parameters.weight must be >= 0")
        path = Path(entry["model"]).expanduser()
        sources.append(MergeSource(path if path.is_absolute() else root / path, weight))
    params = dict(data.get("parameters") or {})
    unknown = sorted(set(params) - _global_params())
    if unknown:
        raise MergeConfigError(f"parameters has unknown key(s) {unknown}; known: {sorted(_global_params())}")
    for key in ("density", "p", "lambda"):
        if key in params:
            _number(f"parameters.{key}", params[key])
    if "normalize" in params and not isinstance(params["normalize"], bool):
        raise MergeConfigError("parameters.normalize must be true or false")
    evaluate = data.get("evaluate") or []
    if not isinstance(evaluate, list) or not all(isinstance(t, str) for t in evaluate):
        raise MergeConfigError("evaluate must be a list of task names or files")
    return MergeSpec(method, base, sources, params, evaluate)


def load_spec(path: str | Path) -> MergeSpec:
    """Read and check a YAML merge config."""
    path = Path(path).expanduser()
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise MergeConfigError(f"cannot read {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise MergeConfigError(f"{path} is not valid YAML: {err}") from None
    return parse_spec(data, root=path.parent)


def read_adapter(path: Path) -> dict[str, torch.Tensor]:
    """The adapter state dict of a run directory or a `.safetensors` file."""
    file = path / "adapter.safetensors" if path.is_dir() else path
    if not file.exists():
        raise MergeConfigError(f"{path}: no adapter (expected a run directory with adapter.safetensors)")
    state = load_file(str(file))
    bad = [k for k in state if not _BLOCK_KEY.match(k)]
    if bad:
        raise MergeConfigError(f"{file}: key {bad[0]!r} is not an adapter key 'blocks.<i>.<param>'")
    return {k: v.float() for k, v in state.items()}


def task_vector(full: nn.Module, adapter: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter as a change to the base model's block parameters, keyed `blocks.{i}.{param}`."""
    blocks = get_blocks(full)
    if any(".lora_A" in k or ".lora_B" in k for k in adapter):
        modules = dense_delta(adapter, LORA_SCALING)
        out = {}
        for module, delta in modules.items():
            name = f"{module}.weight"
            block, param = _split(name, len(blocks))
            base = blocks[block].state_dict()[param]
            if base.shape != delta.shape:
                raise MergeConfigError(
                    f"LoRA product for {name} is {tuple(delta.shape)}, base is {tuple(base.shape)}"
                )
            out[name] = delta.float()
        return out
    out = {}
    for name, value in adapter.items():
        block, param = _split(name, len(blocks))
        base = blocks[block].state_dict().get(param)
        if base is None or base.shape != value.shape:
            raise MergeConfigError(f"adapter tensor {name} does not match the base model's block {block}")
        out[name] = value - base.float()
    return out


def _split(name: str, n_blocks: int) -> tuple[int, str]:
    m = _BLOCK_KEY.match(name)
    if not m or int(m.group(1)) >= n_blocks:
        raise MergeConfigError(f"{name!r} names no block of a {n_blocks}-block base model")
    return int(m.group(1)), m.group(2)


def merge_vectors(spec: MergeSpec, vectors: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Merge task vectors per the spec; a tensor one source lacks counts as zero change there."""
    names = sorted(set().union(*vectors))
    shapes = {n: next(v[n].shape for v in vectors if n in v) for n in names}
    dense = [{n: v.get(n, torch.zeros(shapes[n])) for n in names} for v in vectors]
    weights = [s.weight for s in spec.sources]
    if sum(weights) <= 0:
        raise MergeConfigError("the weights sum to zero")
    merged = registry.aggregate(spec.method, dense, weights, **spec.aggregator_params)
    scale = float(spec.params.get("lambda", 1.0))
    if not spec.params.get("normalize", False):
        scale *= sum(weights)
    return {k: v * scale for k, v in merged.items()}


def apply_vector(full: nn.Module, vector: dict[str, torch.Tensor]) -> nn.Module:
    """The base model (modified in place) with a task vector added to its block parameters."""
    blocks = get_blocks(full)
    with torch.no_grad():
        for name, delta in vector.items():
            block, param = _split(name, len(blocks))
            target = blocks[block].get_parameter(param)
            target.add_(delta.to(target.dtype))
    return full


def merge(spec: MergeSpec, full: nn.Module) -> tuple[nn.Module, dict]:
    """Merge the spec's adapters into `full` (in place); also returns per-source statistics."""
    vectors = [task_vector(full, read_adapter(s.path)) for s in spec.sources]
    merged = merge_vectors(spec, vectors)
    stats = {
        "sources": [
            {
                "path": str(s.path),
                "weight": s.weight,
                "tensors": len(v),
                "norm": math.sqrt(sum(float(t.pow(2).sum()) for t in v.values())),
            }
            for s, v in zip(spec.sources, vectors, strict=True)
        ],  # fmt: skip
        "merged_norm": math.sqrt(sum(float(t.pow(2).sum()) for t in merged.values())),
        "tensors": len(merged),
    }
    return apply_vector(full, merged), stats


def save_merge_report(out: Path, spec: MergeSpec, stats: dict, scores: dict) -> Path:
    """Write merge.json beside the merged checkpoint."""
    report = {
        "method": spec.method,
        "base_model": spec.base_model,
        "params": spec.params,
        **stats,
        "accuracy": scores,
    }
    path = out / "merge.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
