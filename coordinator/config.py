"""The federation's run configuration: `[tool.flwr.app.config]` keys, typed and checked.

Flower hands the ServerApp `context.run_config` (pyproject defaults plus `--run-config` overrides).
Every key has a default here, so a run config that lacks keys (e.g. `flwr.simulation.run_simulation`,
which passes none) still runs the embedded default.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emulator.recipe import Recipe

# Choices that name an extension point come from its registry, so a registered method is a valid value.
# The registries import torch and peft, so they are read on first use: a mistyped key fails in a second.


def registry_choices() -> dict[str, tuple[str, ...]]:
    """Run-config keys whose values come from a registry, with the registered names."""
    from coordinator.aggregation import registry as aggregators
    from coordinator.federation.standin import STANDIN_KINDS
    from emulator.data import PARTITIONERS
    from emulator.derive import CLUSTERINGS
    from protocols.codecs import CODECS

    return {
        "aggregator": aggregators.names("delta") + aggregators.names("robust"),
        "robust-aggregator": aggregators.names("robust"),
        "lora-aggregation": aggregators.names("lora"),
        "codec": tuple(CODECS),
        "partitioning": tuple(PARTITIONERS),
        "standin": tuple(STANDIN_KINDS),
        "emulator": emulator_methods(),
        "clustering": tuple(CLUSTERINGS),
    }


def emulator_methods() -> tuple[str, ...]:
    """The registered emulator derivation methods (emulator.derive.METHODS)."""
    from emulator.derive import METHODS

    return tuple(METHODS)


STRATEGIES = ("fedavg", "fedadam", "fedyogi")
DP_MODES = ("none", "server", "client")
CLIENT_EVAL = ("none", "final", "every")


class ConfigError(ValueError):
    """A run-config key has a wrong type or value."""


@dataclass(frozen=True)
class FederationConfig:
    """One federated offsite-tuning run. Field `foo_bar` is run-config key `foo-bar`."""

    # what to tune
    model: str = "zoo:base"
    task: str = "wn-category"
    emulator: str = "crash"  # crash | uniform | full | path of a saved emulator directory
    adapter_first: int = 2
    adapter_last: int = 2
    keep: int = 0  # 0: about a third of the middle (emulator.recipe)
    placement: str = "edges"
    # CRaSh: balanced (size-bounded) or adjacent clustering; share auto | full | partial:R | none
    # (auto: by model size, emulator.recipe; docs/emulators.md)
    clustering: str = "balanced"
    share: str = "auto"
    distill_steps: int = 0
    calibration_texts: int = 256
    standin_dtype: str = "float16"
    # stand-in kind: an emulator of `model`, or a template + tiny control model (docs/control.md)
    standin: str = "emulator"
    control_template: str = "zoo:small"
    control_layers: int = 2
    control_hidden: int = 64
    control_dropout: float = 0.5
    control_alpha: float = 1.0
    # rounds and clients
    rounds: int = 3
    clients_per_round: int = 8
    min_clients: int = 1
    local_steps: int = 30
    batch_size: int = 16
    lr: float = 0.0  # 0: by model size (emulator.recipe)
    lora_rank: int = 0
    lora_aggregation: str = "ffa"
    seed: int = 0
    max_examples: int = 0
    # data partitioning (read by clients from the same run config)
    partitioning: str = "dirichlet"
    dirichlet_alpha: float = 0.5
    classes_per_partition: int = 2
    # server optimisation and merging
    strategy: str = "fedavg"
    server_lr: float = 1e-3
    server_beta1: float = 0.9
    server_beta2: float = 0.99
    server_tau: float = 1e-3
    aggregator: str = "fedavg"
    merge_density: float = 0.5
    merge_p: float = 0.5
    # uploads
    codec: str = "fp16"
    dare_p: float = 0.5
    topk_fraction: float = 0.1
    clip_norm: float = 0.0
    max_update_norm: float = 0.0
    # security (docs/security.md): robust merges, differential privacy, secure aggregation
    trimmed_beta: float = 0.2
    krum_malicious: int = 1
    dp: str = "none"
    dp_noise_multiplier: float = 1.0
    dp_clip_norm: float = 1.0
    dp_delta: float = 1e-5
    dp_max_epsilon: float = 0.0
    secure_aggregation: bool = False
    secagg_shares: int = 3
    secagg_threshold: int = 2
    # evaluation and reference
    eval_size: int = 200
    eval_every: int = 1
    client_eval: str = "final"
    full_ft_steps: int = 0
    reference_report: str = ""
    # run store, resume, timeouts
    out_dir: str = "~/.offsite/runs"
    run_name: str = ""
    resume: bool = False
    stop_after: int = 0
    signing_key: str = ""
    site_keys: str = ""  # registered site public keys: a directory of *.pub or a comma-separated list
    round_timeout: float = 600.0
    query_timeout: float = 60.0
    node_timeout: float = 120.0
    threads: int = 0
    # operations: run store URL ('': SQLite out-dir/offsite.db, 'none': off), Prometheus port (0: off)
    store_url: str = ""
    metrics_port: int = 0
    # compute: device auto | cpu | cuda | cuda:N, precision fp32 | bf16 | fp16 (a site's node-config wins)
    device: str = "cpu"
    precision: str = "fp32"

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def from_run_config(cls, run_config: dict[str, Any] | None = None) -> FederationConfig:
        """Build from a Flower run config (kebab-case keys); unknown keys are an error."""
        run_config = dict(run_config or {})
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        unknown = sorted(set(run_config) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown run-config key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        values = {}
        for key, value in run_config.items():
            f = known[key]
            values[f.name] = _coerce(key, value, type(getattr(cls, f.name)))
        cfg = cls(**values)
        cfg.check()
        return cfg

    def to_run_config(self) -> dict[str, Any]:
        """The kebab-case dict form (as in pyproject's [tool.flwr.app.config])."""
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}

    def with_recipe(self, recipe: Recipe) -> FederationConfig:
        """This config with lr, share and keep left at 0/auto filled in from the model's default recipe."""
        from emulator.recipe import CONTROL_LR

        lr = recipe.lr if self.standin == "emulator" else CONTROL_LR
        return self.replace(
            lr=self.lr or lr,
            share=recipe.share if self.share == "auto" else self.share,
            keep=self.keep or recipe.keep,
        )

    def replace(self, **changes: Any) -> FederationConfig:
        """A copy with some fields changed (snake_case names), checked."""
        data = asdict(self)
        data.update(changes)
        cfg = FederationConfig(**data)
        cfg.check()
        return cfg

    # --- checks ---------------------------------------------------------------------------
    def check(self) -> None:
        """Raise ConfigError for values that cannot work."""
        registered = registry_choices()
        choices = {
            "strategy": STRATEGIES,
            "aggregator": registered["aggregator"],
            "dp": DP_MODES,
            "lora-aggregation": registered["lora-aggregation"],
            "codec": registered["codec"],
            "client-eval": CLIENT_EVAL,
            "partitioning": registered["partitioning"],
            "standin-dtype": ("float16", "float32"),
            "placement": ("edges", "spread"),
            "clustering": registered["clustering"],
            "standin": registered["standin"],
        }
        for key, allowed in choices.items():
            value = getattr(self, key.replace("-", "_"))
            if value not in allowed:
                raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
        positive = ["rounds", "clients_per_round", "min_clients", "local_steps", "batch_size", "eval_size"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1; got {getattr(self, name)}")
        non_negative = [
            "lora_rank", "distill_steps", "max_examples", "full_ft_steps", "stop_after", "threads",
            "clip_norm", "max_update_norm", "adapter_first", "adapter_last", "eval_every", "keep", "lr",
        ]  # fmt: skip
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 0; got {getattr(self, name)}")
        for name in ("round_timeout", "query_timeout", "node_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name.replace('_', '-')} must be > 0; got {getattr(self, name)}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be one of fp32, bf16, fp16; got {self.precision!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N; got {self.device!r}")
        if not 0 <= self.metrics_port < 65536:
            raise ConfigError(f"metrics-port must be in 0..65535 (0: off); got {self.metrics_port}")
        if self.store_url and self.store_url.lower() != "none":
            from coordinator.ops.runstore.store import StoreError, check_store_url

            try:
                check_store_url(self.store_url)
            except StoreError as exc:
                raise ConfigError(f"store-url: {exc}") from exc
        if self.min_clients > self.clients_per_round:
            raise ConfigError("min-clients cannot exceed clients-per-round")
        if not 0 <= self.dare_p < 1 or not 0 <= self.merge_p < 1:
            raise ConfigError("dare-p and merge-p must be in [0, 1)")
        if not 0 < self.topk_fraction <= 1 or not 0 < self.merge_density <= 1:
            raise ConfigError("topk-fraction and merge-density must be in (0, 1]")
        if self.lora_rank and self.aggregator != "fedavg":
            raise ConfigError(
                "with lora-rank > 0, LoRA is merged by lora-aggregation; leave aggregator=fedavg"
            )
        if self.lora_rank and self.placement == "spread":
            # emulator.plugin keys LoRA by block index; a weight-tied adapter block at several
            # positions gets one LoRA per position, and their keys collide.
            raise ConfigError("lora-rank > 0 needs placement=edges (LoRA on weight-tied adapter blocks)")
        if self.emulator == "full" and self.distill_steps:
            raise ConfigError(
                "emulator=full removes nothing, so there is no middle to distil; set distill-steps=0"
            )
        self._check_share()
        self._check_security(registered["robust-aggregator"])
        if self.lora_rank and self.lora_aggregation == "product" and self.strategy != "fedavg":
            raise ConfigError("product-space LoRA re-factorises every round; use strategy=fedavg with it")
        if self.standin == "control":
            if self.lora_rank or self.full_ft_steps:
                raise ConfigError(
                    "standin=control trains the whole control model: set lora-rank=0, full-ft-steps=0"
                )
            if self.control_layers < 1 or self.control_hidden < 4 or self.control_hidden % 4:
                raise ConfigError("control-layers must be >= 1 and control-hidden a positive multiple of 4")
            if not 0 <= self.control_dropout < 1 or self.control_alpha < 0:
                raise ConfigError("control-dropout must be in [0, 1) and control-alpha >= 0")
        if (
            self.emulator not in registered["emulator"]
            and not (Path(self.emulator).expanduser() / "manifest.json").exists()
        ):
            raise ConfigError(
                f"emulator must be one of {', '.join(registered['emulator'])} or a saved emulator directory; "
                f"got {self.emulator!r}"
            )

    def _check_share(self) -> None:
        """`share` must be auto, full, none or partial:R with R >= 1."""
        from emulator.crash import share_repeats

        if self.share == "auto":
            return
        try:
            share_repeats(self.share)
        except ValueError as exc:
            raise ConfigError(f"share: {exc}") from None

    def _check_security(self, robust: tuple[str, ...]) -> None:
        """Robust merges, DP and SecAgg+ only where their guarantees hold (docs/security.md)."""
        if not 0 <= self.trimmed_beta < 0.5 or self.krum_malicious < 0:
            raise ConfigError("trimmed-beta must be in [0, 0.5) and krum-malicious >= 0")
        if self.aggregator in robust and self.lora_rank and self.lora_aggregation == "product":
            raise ConfigError(
                f"aggregator={self.aggregator} would merge LoRA A and B apart; use lora-aggregation=ffa"
            )
        if self.dp != "none":
            if not (self.dp_clip_norm > 0 and self.dp_noise_multiplier > 0 and 0 < self.dp_delta < 1):
                raise ConfigError("dp needs dp-clip-norm > 0, dp-noise-multiplier > 0 and 0 < dp-delta < 1")
            if self.aggregator != "fedavg" or (self.lora_rank and self.lora_aggregation == "product"):
                raise ConfigError(
                    "dp calibrates noise for a plain mean: use aggregator=fedavg (and ffa for LoRA)"
                )
        if self.site_keys:
            if self.secure_aggregation:
                raise ConfigError(
                    "site-keys checks each site's own update, but under secure-aggregation the coordinator "
                    "sees only their masked sum: use one or the other"
                )
            from protocols.site_signing import SignatureError, load_site_keys

            try:
                load_site_keys(self.site_keys)
            except (SignatureError, ValueError) as exc:
                raise ConfigError(f"site-keys: {exc}") from None
        if self.dp_max_epsilon < 0:
            raise ConfigError("dp-max-epsilon must be >= 0 (0: no limit)")
        if self.secure_aggregation:
            if self.strategy != "fedavg" or self.aggregator != "fedavg":
                raise ConfigError(
                    "secure-aggregation sums masked updates: it needs strategy=fedavg, aggregator=fedavg"
                )
            if self.dp == "server":
                raise ConfigError(
                    "secure-aggregation hides each update, so the coordinator cannot clip them: use dp=client "
                    "(sites clip with Flower's fixedclipping_mod, the coordinator adds the noise)"
                )
            if self.dp == "client" and self.lora_rank:
                raise ConfigError(
                    "dp=client with secure-aggregation tunes whole adapter blocks: set lora-rank=0"
                )
            if self.lora_rank and self.lora_aggregation == "product":
                raise ConfigError("secure-aggregation averages tensors: use lora-aggregation=ffa with LoRA")
            if not 2 <= self.secagg_threshold <= self.secagg_shares:
                raise ConfigError("secagg needs 2 <= secagg-threshold <= secagg-shares")

    @property
    def method(self) -> str:
        """The emulator derivation method ('crash'/'uniform'), or 'saved'."""
        return self.emulator if self.emulator in emulator_methods() else "saved"


def _coerce(key: str, value: Any, want: type) -> Any:
    if want is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif want is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif want is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif want is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"run-config key {key!r} must be {want.__name__}, got {value!r}")


# Keys that may differ between a run and its resumption without changing the result.
RESUMABLE_CHANGES = frozenset(
    {
        "rounds",
        "resume",
        "stop-after",
        "round-timeout",
        "query-timeout",
        "node-timeout",
        "threads",
        "store-url",
        "metrics-port",
        "run-name",
        "out-dir",
    }
)
