"""Architecture registry: where a causal LM keeps its decoder blocks, embeddings, final norm and head.

Everything that edits a model by block (emulators, plug-in, LoRA placement) goes through here,
so a new architecture is one entry, and block identity is always an index, never a list position
of parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


class UnsupportedArchitectureError(ValueError):
    """The model's architecture has no entry in the block registry."""


@dataclass(frozen=True)
class BlockPaths:
    """Dotted attribute paths, from the *ForCausalLM module, to the parts emulators touch."""

    blocks: str
    embeddings: tuple[str, ...]
    final_norm: str
    head: str
    # Linear-layer names inside a block that LoRA targets by default.
    lora_targets: tuple[str, ...]


_LLAMA = BlockPaths(
    blocks="model.layers",
    embeddings=("model.embed_tokens",),
    final_norm="model.norm",
    head="lm_head",
    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
)

REGISTRY: dict[str, BlockPaths] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _LLAMA,
    "gpt2": BlockPaths(
        blocks="transformer.h",
        embeddings=("transformer.wte", "transformer.wpe"),
        final_norm="transformer.ln_f",
        head="lm_head",
        lora_targets=("c_attn", "c_proj", "c_fc"),
    ),
    "opt": BlockPaths(
        blocks="model.decoder.layers",
        embeddings=("model.decoder.embed_tokens", "model.decoder.embed_positions"),
        final_norm="model.decoder.final_layer_norm",
        head="lm_head",
        lora_targets=("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    ),
    "gpt_neox": BlockPaths(
        blocks="gpt_neox.layers",
        embeddings=("gpt_neox.embed_in",),
        final_norm="gpt_neox.final_layer_norm",
        head="lm_head",
        lora_targets=("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    ),
}


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


def paths_for(model: nn.Module) -> BlockPaths:
    """Registry entry for a model, or a clear error naming the unsupported architecture."""
    mt = model_type(model)
    if mt not in REGISTRY:
        raise UnsupportedArchitectureError(
            f"architecture {mt!r} ({type(unwrap(model)).__name__}) is not supported; "
            f"supported: {', '.join(sorted(REGISTRY))}. Add an entry to emulator.blocks.REGISTRY."
        )
    return REGISTRY[mt]


def get_path(root: nn.Module, dotted: str) -> nn.Module:
    """Follow a dotted attribute path from root."""
    obj = root
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def get_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder block list of a causal LM (length L)."""
    return get_path(unwrap(model), paths_for(model).blocks)


def set_blocks(model: nn.Module, blocks: list[nn.Module], layer_types: list[str] | None = None) -> None:
    """Replace the decoder block list; keep config.num_hidden_layers (and layer_types) in step."""
    base = unwrap(model)
    parent_path, _, attr = paths_for(model).blocks.rpartition(".")
    setattr(get_path(base, parent_path), attr, nn.ModuleList(blocks))
    base.config.num_hidden_layers = len(blocks)
    if layer_types is not None:
        base.config.layer_types = list(layer_types)


def num_blocks(model: nn.Module) -> int:
    """Number of decoder blocks L."""
    return len(get_blocks(model))


def block_prefix(model: nn.Module, index: int) -> str:
    """State-dict prefix of block `index` in the unwrapped model, e.g. 'model.layers.3.'."""
    return f"{paths_for(model).blocks}.{index}."


def set_layer_index(block: nn.Module, index: int) -> None:
    """Point a block's attention at KV-cache slot `index` (transformers keys caches by layer_idx)."""
    for module in block.modules():
        if hasattr(module, "layer_idx"):
            module.layer_idx = index
