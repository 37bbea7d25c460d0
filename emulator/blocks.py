"""Where a causal LM keeps its decoder blocks, embeddings, final norm and head, found from its structure.

Everything that edits a model by block (emulators, plug-in, LoRA placement) goes through here, so
block identity is always an index, never a list position of parameters. The block list is the one
`nn.ModuleList` whose length is the config's layer count; embeddings and head come from
`get_input_embeddings()` / `get_output_embeddings()`; the final norm is the norm beside the block
list; LoRA targets are the block's own linear layers. `REGISTRY` only overrides what the structure
gets wrong, and `REFUSED` names families that are known not to work, with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from torch import nn


class UnsupportedArchitectureError(ValueError):
    """The model cannot be split into decoder blocks the emulator can rebuild (the message says why)."""


@dataclass(frozen=True)
class BlockPaths:
    """Dotted attribute paths, from the *ForCausalLM module, to the parts emulators touch."""

    blocks: str
    # The input (token) embedding first, then other embeddings outside the blocks (positions, ...).
    embeddings: tuple[str, ...]
    # None for post-norm models that end on their last block (BERT-style, GPT-1).
    final_norm: str | None
    head: str
    # Linear-layer names inside a block that LoRA targets by default.
    lora_targets: tuple[str, ...]


# Per-family corrections to what the structure search finds (BlockPaths field -> value).
# "lora_exclude" drops layer names from the LoRA targets found.
_MAMBA = {"lora_exclude": ("out_proj", "conv1d", "dt_proj")}
REGISTRY: dict[str, dict[str, object]] = {
    # peft refuses LoRA on Mamba mixers' out_proj and conv1d; dt_proj's weight is used directly
    # (not through its forward), so LoRA on it would do nothing until merged.
    "mamba": _MAMBA,
    "falcon_mamba": _MAMBA,
    "mamba2": _MAMBA,
    "falcon_h1": _MAMBA,
    "nemotron_h": _MAMBA,
    # The router reads classifier.weight directly.
    "longcat_flash": {"lora_exclude": ("classifier",)},
}

# Families the structure search would accept but whose emulators would be wrong, and why.
REFUSED: dict[str, str] = {}

# Config attributes that hold the number of decoder blocks, most common first.
LAYER_COUNT_NAMES = (
    "num_hidden_layers",
    "n_layer",
    "num_layers",
    "n_layers",
    "decoder_layers",
    "num_decoder_layers",
    "num_blocks",
)
FINAL_NORM_NAMES = (
    "norm",
    "ln_f",
    "final_layer_norm",
    "final_layernorm",
    "norm_f",
    "final_norm",
    "ln_out",
    "layer_norm",
    "layernorm",
)
MULTIMODAL_CONFIGS = ("vision_config", "audio_config", "speech_config", "vision_tower_config")
_CACHE_ATTR = "_offsite_block_paths"
# Per-layer index lists: names like mlp_only_layers, full_attn_idxs, hybrid_layer_ids.
_INDEX_LIST = re.compile(r"(layers|layer_ids|layer_idx|layer_indices|idxs|indices)$")
_NOT_PER_LAYER = re.compile(r"(token_id|architectures|label|suppress|bad_words)")


def model_type(model: nn.Module) -> str:
    """The Hugging Face `model_type` of a model (e.g. 'llama'), unwrapping peft wrappers."""
    base = unwrap(model)
    config = getattr(base, "config", None)
    mt = getattr(config, "model_type", None)
    if mt is None:
        raise UnsupportedArchitectureError(f"{type(base).__name__} has no config.model_type")
    return mt


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying *ForCausalLM module of a peft model (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def text_config(config):
    """The config that describes the decoder stack (the text sub-config of a composite config)."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def _configs(config) -> list:
    text = text_config(config)
    return [config] if text is config else [text, config]


def layer_count(config) -> int | None:
    """The number of decoder blocks a config declares, under whichever name it uses.

    Stored fields win over computed ones (LongCat-Flash derives num_hidden_layers = 2·num_layers;
    ProphetNet's is its encoder's count).
    """
    for stored in (True, False):
        for cfg in _configs(config):
            derived = _derived(cfg)
            for name in LAYER_COUNT_NAMES:
                value = _attr(cfg, name)
                if _int(value) and value > 0 and (name not in derived) == stored:
                    return value
    return None


def _refuse(base: nn.Module, reason: str) -> UnsupportedArchitectureError:
    mt = getattr(getattr(base, "config", None), "model_type", None)
    return UnsupportedArchitectureError(
        f"model type {mt!r} ({type(base).__name__}) is not supported: {reason}"
    )


def _check_family(base: nn.Module) -> None:
    config = base.config
    if config.model_type in REFUSED:
        raise _refuse(base, REFUSED[config.model_type])
    if getattr(config, "is_encoder_decoder", False):
        raise _refuse(base, "encoder-decoder models have no single decoder block stack to emulate")
    if (_attr(text_config(config), "num_kv_shared_layers") or 0) > 0:
        raise _refuse(base, "later layers reuse earlier layers' KV caches (num_kv_shared_layers > 0)")
    if (_attr(text_config(config), "hidden_size_per_layer_input") or 0) > 0:
        raise _refuse(
            base, "per-layer input embeddings are laid out by depth (hidden_size_per_layer_input > 0)"
        )
    towers = [k for k in MULTIMODAL_CONFIGS if getattr(config, k, None) is not None]
    if towers:
        raise _refuse(base, f"multimodal ({', '.join(towers)}); use the family's text-only causal LM")


def _size(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _find_blocks(base: nn.Module) -> str:
    lists = [(n, m) for n, m in base.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0 and n]
    count = layer_count(base.config)
    found = [(n, m) for n, m in lists if len(m) == count]
    if not found:
        # No usable layer count: the biggest list of same-class modules is the block stack.
        found = [(n, m) for n, m in lists if len(m) >= 2 and len({type(c) for c in m}) == 1]
    if not found:
        raise _refuse(base, f"no decoder block list found (no nn.ModuleList of {count} blocks)")
    found.sort(key=lambda item: (_size(item[1]), -item[0].count(".")), reverse=True)
    name, blocks = found[0]
    # Anything else of that length outside the chosen list holds per-layer parts too (XLM keeps
    # attentions and ffns in parallel lists; HRM runs two stacks in cycles): no block is whole.
    others = [n for n, m in found[1:] if not n.startswith(name + ".") and _size(m) > 0]
    if others and (len(blocks) == count or type(found[1][1][0]) is type(blocks[0])):
        raise _refuse(
            base,
            f"layers are split over several module lists ({', '.join([name, *others][:4])}), not one block list",
        )
    return name


def _name_of(base: nn.Module, module: nn.Module | None) -> str | None:
    if module is None:
        return None
    return next((n for n, m in base.named_modules() if m is module), None)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or "norm" in type(module).__name__.lower()


def _find_final_norm(base: nn.Module, blocks: str) -> str | None:
    parent_path, _, attr = blocks.rpartition(".")
    parent = get_path(base, parent_path) if parent_path else base
    children = list(parent.named_children())
    norms = [(n, m) for n, m in children if n != attr and _is_norm(m)]
    if not norms:
        return None
    by_name = {n: m for n, m in norms}
    prefix = f"{parent_path}." if parent_path else ""
    for name in FINAL_NORM_NAMES:
        if name in by_name:
            return prefix + name
    # Otherwise the first norm registered after the blocks, skipping embedding norms.
    order = [n for n, _ in children]
    after = [n for n, _ in norms if order.index(n) > order.index(attr) and "emb" not in n]
    return prefix + after[0] if after else None


def _extra_embeddings(base: nn.Module, blocks: str, first: str, head: str) -> list[str]:
    out = []
    for name, module in base.named_modules():
        inside = name.startswith(blocks + ".") or name in (first, head)
        if isinstance(module, nn.Embedding) and not inside:
            out.append(name)
    return out


def _is_lora_linear(module: nn.Module) -> bool:
    # A subclass that overrides both construction and forward (a router returning a tuple, a
    # grouped projection) is not a plain linear map, so LoRA on it would not merge.
    if isinstance(module, nn.Linear):
        cls = type(module)
        return cls.forward is nn.Linear.forward or cls.__init__ is nn.Linear.__init__
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def lora_target_names(blocks: nn.ModuleList) -> tuple[str, ...]:
    """Leaf names of the plain linear (and GPT-2 Conv1D) layers inside the blocks, first seen first."""
    names: dict[str, None] = {}
    for block in blocks:
        for name, module in block.named_modules():
            parts = name.split(".")
            if "lora_A" in parts or "lora_B" in parts or not _is_lora_linear(module):
                continue  # LoRA's own layers, where peft already wrapped the model
            parts = parts[:-1] if parts[-1] == "base_layer" else parts
            if parts and parts[-1]:
                names.setdefault(parts[-1], None)
    return tuple(names)


def discover(model: nn.Module) -> BlockPaths:
    """Find a causal LM's block list, embeddings, final norm, head and LoRA targets from its structure."""
    base = unwrap(model)
    model_type(base)
    _check_family(base)
    blocks = _find_blocks(base)
    first = _name_of(base, base.get_input_embeddings()) if hasattr(base, "get_input_embeddings") else None
    if first is None:
        raise _refuse(base, "no input embeddings (get_input_embeddings() found nothing)")
    head = _name_of(base, base.get_output_embeddings())
    if head is None:
        raise _refuse(base, "no output head (get_output_embeddings() found nothing)")
    paths = BlockPaths(
        blocks=blocks,
        embeddings=(first, *_extra_embeddings(base, blocks, first, head)),
        final_norm=_find_final_norm(base, blocks),
        head=head,
        lora_targets=lora_target_names(get_path(base, blocks)),
    )
    override = dict(REGISTRY.get(base.config.model_type, {}))
    exclude = set(override.pop("lora_exclude", ()))
    paths = replace(paths, lora_targets=tuple(n for n in paths.lora_targets if n not in exclude))
    return replace(paths, **override)


def paths_for(model: nn.Module) -> BlockPaths:
    """A model's block paths (found once, then kept on the model), or a clear error saying why not."""
    base = unwrap(model)
    cached = base.__dict__.get(_CACHE_ATTR)
    if cached is not None and isinstance(_get_or_none(base, cached.blocks), nn.ModuleList):
        return cached
    paths = discover(base)
    # A plain attribute, so deep copies (emulator shells) keep it even with an emptied block list.
    base.__dict__[_CACHE_ATTR] = paths
    return paths


def get_path(root: nn.Module, dotted: str) -> nn.Module:
    """Follow a dotted attribute path from root."""
    obj = root
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _get_or_none(root: nn.Module, dotted: str):
    try:
        return get_path(root, dotted)
    except AttributeError:
        return None


def get_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder block list of a causal LM (length L)."""
    return get_path(unwrap(model), paths_for(model).blocks)


def set_blocks(model: nn.Module, blocks: list[nn.Module], layer_types: list[str] | None = None) -> None:
    """Replace the decoder block list; keep the config's layer count (and layer_types) in step."""
    base = unwrap(model)
    parent_path, _, attr = paths_for(model).blocks.rpartition(".")
    setattr(get_path(base, parent_path) if parent_path else base, attr, nn.ModuleList(blocks))
    _set_layer_count(base.config, len(blocks))
    if layer_types is not None:
        text_config(base.config).layer_types = list(layer_types)


def _set_layer_count(config, n: int) -> None:
    old = layer_count(config)
    for cfg in _configs(config):
        derived = _derived(cfg)
        for name in LAYER_COUNT_NAMES:
            # Computed counts follow the stored one they derive from.
            if name not in derived and _attr(cfg, name) == old:
                setattr(cfg, name, n)


def _per_layer(name: str, value, n: int) -> bool:
    if len(value) != n:
        return False
    if isinstance(value, str):
        return "pattern" in name  # e.g. hybrid_override_pattern "M-M*": one character per block
    return not _is_index_list(name, value, n)


def _is_index_list(name: str, value, n: int) -> bool:
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    # Entries past the last block (a default written for a deeper model) name no block here.
    if not (_INDEX_LIST.search(name) and ints and all(v >= 0 for v in value)):
        return False
    return len(value) != n or sorted(value) == list(range(n))


def _select_fields(fields: dict, source: dict, layout: list[int], n: int) -> None:
    for name, value in source.items():
        if not isinstance(name, str) or _NOT_PER_LAYER.search(name):
            continue
        if isinstance(value, dict):
            if isinstance(fields.get(name), dict):
                _select_fields(fields[name], value, layout, n)
        elif isinstance(value, (list, tuple, str)) and _per_layer(name, value, n):
            picked = [value[i] for i in layout]
            fields[name] = "".join(picked) if isinstance(value, str) else type(value)(picked)
        elif isinstance(value, (list, tuple)) and value and _is_index_list(name, value, n):
            members = set(value)
            fields[name] = type(value)(p for p, b in enumerate(layout) if b in members)


def select_layers(config, layout: list[int], source=None) -> None:
    """Make `config` describe a model whose position p runs block layout[p] of `source` (default: itself).

    Per-layer lists (layer_types, per-layer flags, pattern strings) are re-indexed by the layout;
    lists of layer indices (mlp_only_layers, full_attn_idxs, ...) name the positions whose block
    was in them. Rules computed from an index (first_k_dense_replace, decoder_sparse_step) cannot
    be re-indexed; the blocks themselves still carry the structure they were built with.
    """
    source = config if source is None else source
    n = layer_count(source)
    for cfg, src in zip(_configs(config), _configs(source), strict=True):
        values = {k: v for k in src.to_dict() if (v := _attr(src, k, _MISSING)) is not _MISSING}
        fields = {k: _copy_tree(v) for k, v in values.items()}
        _select_fields(fields, values, layout, n)
        for name, value in fields.items():
            if value != values[name]:
                _assign(cfg, name, value)
    _set_layer_count(config, len(layout))
    for cfg, src in zip(_configs(config), _configs(source), strict=True):
        _check_derived_lists(cfg, src, layout, n)


# transformers' deprecated aliases (they warn when read, and are never per-layer lists).
_DEPRECATED_PROPS = frozenset({"torch_dtype", "use_return_dict"})


def _derived(config) -> list[str]:
    """Config attributes computed by a property (or an alias of one), not stored."""
    cls = type(config)
    props = [
        n
        for n in dir(cls)
        if not n.startswith("_") and n not in _DEPRECATED_PROPS and isinstance(getattr(cls, n, None), property)
    ]
    aliases = [k for k, v in (getattr(config, "attribute_map", None) or {}).items() if v in props]
    return props + aliases


def _check_derived_lists(config, source, layout: list[int], n: int) -> None:
    # A computed per-layer list (Jamba's layer_types from attn_layer_period/offset) follows an
    # index rule, not the layout: the emulator's config would misstate what positions run, and
    # models pick each position's mask and cache from such lists.
    for name in _derived(config):
        value = _attr(source, name)
        if not isinstance(value, (list, tuple)) or len(value) != n or _is_index_list(name, value, n):
            continue
        if list(_attr(config, name) or []) != [value[i] for i in layout]:
            raise UnsupportedArchitectureError(
                f"model type {source.model_type!r} is not supported for this layout: its config computes "
                f"{name} from a rule over layer indices, so it cannot say what each emulator position runs"
            )


_MISSING = object()


def _assign(config, name: str, value) -> None:
    # Lists change in place: modules that kept a reference at init (Mllama's cross_attention_layers)
    # then see the new value too.
    current = _attr(config, name)
    if isinstance(current, list) and isinstance(value, list):
        current[:] = value
    elif isinstance(current, dict) and isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and item != current.get(key):
                _assign_item(current, key, item)
    else:
        setattr(config, name, value)


def _assign_item(mapping: dict, key: str, value) -> None:
    if isinstance(mapping.get(key), list) and isinstance(value, list):
        mapping[key][:] = value
    else:
        mapping[key] = value


def _attr(obj, name: str, default=None):
    # Some configs raise other errors than AttributeError for fields they only keep per layer.
    try:
        return getattr(obj, name, default)
    except Exception:
        return default


def _copy_tree(value):
    return {k: _copy_tree(v) for k, v in value.items()} if isinstance(value, dict) else value


def num_blocks(model: nn.Module) -> int:
    """Number of decoder blocks L."""
    return len(get_blocks(model))


def block_prefix(model: nn.Module, index: int) -> str:
    """State-dict prefix of block `index` in the unwrapped model, e.g. 'model.layers.3.'."""
    return f"{paths_for(model).blocks}.{index}."


def set_layer_index(block: nn.Module, index: int) -> None:
    """Point a block's attention at KV-cache slot `index` (transformers keys caches by layer_idx).

    A block with k cache slots of its own (LongCat-Flash: two attention sublayers, 2b and 2b+1)
    gets slots k·index .. k·index+k-1.
    """
    inner = sorted(
        {m.layer_idx for m in block.modules() if m is not block and _int(getattr(m, "layer_idx", None))}
    )
    k = len(inner)
    stacked = k > 1 and inner == list(range(inner[0], inner[0] + k)) and inner[0] % k == 0
    for module in block.modules():
        if hasattr(module, "layer_idx"):
            own = module is not block and stacked and _int(module.layer_idx)
            module.layer_idx = index * k + module.layer_idx - inner[0] if own else index
        if _int(getattr(module, "layer_id", None)):  # older classes (GPT-Neo)
            module.layer_id = index


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
