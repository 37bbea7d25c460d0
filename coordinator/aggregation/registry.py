"""The aggregator registry: every merge the coordinator can run, with its parameters' run-config keys.

In the manner of mergekit's merge-method registry, one `register` call per method is the whole
of adding one: `coordinator.config` takes its allowed `aggregator` values from here, the round
loop reads each method's parameters from the run config through `run_config_keys`, and
`offsite merge` validates a merge file's parameters against the same table.
Kinds: `delta` merges clients' deltas (FedAvg, TIES, DARE...), `robust` runs one of Flower's
Byzantine-robust strategies on them, `lora` merges LoRA factors (run-config `lora-aggregation`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from coordinator.aggregation import lora, robust, tensors
from coordinator.aggregation.tensors import Delta, Weights

Kind = Literal["delta", "robust", "lora"]


@dataclass(frozen=True)
class Aggregator:
    """One registered method: its function, kind, and parameter -> run-config key map."""

    name: str
    kind: Kind
    fn: Callable[..., Any]
    run_config_keys: dict[str, str] = field(default_factory=dict)
    # Seeded methods draw random masks: the loop passes seed = run seed + round.
    seeded: bool = False
    summary: str = ""

    @property
    def params(self) -> tuple[str, ...]:
        """The parameter names a merge file may give (plus `seed` for seeded methods)."""
        return (*self.run_config_keys, *(("seed",) if self.seeded else ()))

    def params_from(self, run_config: dict[str, Any], seed: int | None = None) -> dict[str, Any]:
        """This method's keyword arguments read from a kebab-case run config (and the round's seed)."""
        out = {param: run_config[key] for param, key in self.run_config_keys.items()}
        if self.seeded:
            out["seed"] = seed
        return out


AGGREGATORS: dict[str, Aggregator] = {}


def register(
    name: str,
    kind: Kind,
    fn: Callable[..., Any],
    run_config_keys: dict[str, str] | None = None,
    seeded: bool = False,
) -> Aggregator:
    """Add a method to the registry (its summary is the first line of `fn`'s docstring)."""
    if name in AGGREGATORS:
        raise ValueError(f"aggregator {name!r} is registered twice")
    summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
    AGGREGATORS[name] = Aggregator(name, kind, fn, dict(run_config_keys or {}), seeded, summary)
    return AGGREGATORS[name]


def names(kind: Kind | None = None) -> tuple[str, ...]:
    """Registered method names, of one kind or all, in registration order."""
    return tuple(n for n, a in AGGREGATORS.items() if kind is None or a.kind == kind)


def get(name: str, kind: Kind | None = None) -> Aggregator:
    """The method registered as `name` (of `kind`, if given), or a ValueError listing the known ones."""
    agg = AGGREGATORS.get(name)
    if agg is None or (kind is not None and agg.kind != kind):
        raise ValueError(f"unknown aggregator {name!r}; known: {', '.join(names(kind))}")
    return agg


def aggregate(
    name: str, deltas: Sequence[Mapping[str, torch.Tensor]], weights: Weights, **params: object
) -> Delta:
    """Run the `delta` aggregator registered as `name` with its parameters, checked against its signature."""
    fn = get(name, "delta").fn
    sig = inspect.signature(fn)
    accepted = [p for p in sig.parameters if p not in ("deltas", "weights")]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"aggregator {name!r} takes no parameter(s) {unknown}; it accepts {accepted}")
    missing = [
        p for p in accepted if sig.parameters[p].default is inspect.Parameter.empty and p not in params
    ]
    if missing:
        raise ValueError(f"aggregator {name!r} needs parameter(s) {missing}")
    return fn(deltas, weights, **params)


register("fedavg", "delta", tensors.weighted_mean)
register("task_arithmetic", "delta", tensors.task_arithmetic)
register("magnitude_prune", "delta", tensors.magnitude_prune, {"density": "merge-density"})
register("ties", "delta", tensors.ties, {"density": "merge-density"})
register("dare_linear", "delta", tensors.dare_linear, {"p": "merge-p"}, seeded=True)
register("dare_ties", "delta", tensors.dare_ties, {"p": "merge-p"}, seeded=True)
register("fedmedian", "robust", robust.fedmedian)
register("fedtrimmedavg", "robust", robust.fedtrimmedavg, {"beta": "trimmed-beta"})
register("krum", "robust", robust.krum, {"num_malicious_nodes": "krum-malicious"})
register("ffa", "lora", lora.ffa_mean)
register("product", "lora", lora.product_space_mean)
