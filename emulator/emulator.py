"""The emulator: a full model's stand-in with trainable adapter blocks and a compressed frozen middle.

An emulator is an ordinary Hugging Face causal LM of the same class whose block list is rebuilt
from a *layout* (one full-model block index per position). Positions that name the same block
share its parameters (weight tying), so CRaSh keeps depth L while storing only K blocks.
Adapter weights are keyed by full-model block index, `blocks.{i}.{param}`, which is what makes
plug-in exact and independent of where a block sits in the emulator.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from emulator.blocks import get_blocks, paths_for, set_blocks, set_layer_index
from protocols.hashing import hash_directory, hash_state_dict

MANIFEST = "manifest.json"
WEIGHTS = "emulator.safetensors"
FORMAT_VERSION = 1


@dataclass
class Manifest:
    """What an emulator is made of, saved next to its weights."""

    method: str
    layout: list[int]
    adapter_blocks: list[int]
    num_source_blocks: int
    model_type: str
    source_hash: str
    options: dict = field(default_factory=dict)
    clusters: list[list[int]] | None = None
    distillation: dict | None = None
    format_version: int = FORMAT_VERSION
    emulator_hash: str = ""

    @property
    def stored_blocks(self) -> list[int]:
        """Unique full-model block indices the emulator stores, in layout order."""
        return list(dict.fromkeys(self.layout))

    @property
    def adapter_positions(self) -> list[int]:
        """Emulator positions that run an adapter block."""
        return [p for p, b in enumerate(self.layout) if b in self.adapter_blocks]


def tied_clone(block: nn.Module) -> nn.Module:
    """A new module object that shares every parameter and buffer tensor with `block`."""
    memo = {id(t): t for t in list(block.parameters()) + list(block.buffers())}
    return copy.deepcopy(block, memo)


def _shell_copy(model: nn.Module) -> nn.Module:
    """Deep-copy a model without its blocks (so copying a big model does not double its memory)."""
    blocks = list(get_blocks(model))
    layer_types = getattr(model.config, "layer_types", None)
    set_blocks(model, [])
    try:
        shell = copy.deepcopy(model)
    finally:
        set_blocks(model, blocks, layer_types)
    return shell


def assemble(
    model: nn.Module,
    layout: list[int],
    source_blocks: list[nn.Module] | None = None,
    source_layer_types: list[str] | None = None,
) -> nn.Module:
    """Build a model whose position p runs block layout[p]; repeated indices share weights.

    `source_blocks` are indexed by full-model block index (defaults to `model`'s own blocks).
    Per-layer attention types (sliding/full) follow the block they run. The result is a new
    module; `model` is left unchanged.
    """
    blocks_src = list(get_blocks(model)) if source_blocks is None else source_blocks
    types = source_layer_types or getattr(model.config, "layer_types", None)
    shell = _shell_copy(model)
    owned: dict[int, nn.Module] = {}
    new_blocks = []
    for pos, src in enumerate(layout):
        if src not in owned:
            owned[src] = copy.deepcopy(blocks_src[src])
            block = owned[src]
        else:
            block = tied_clone(owned[src])
        set_layer_index(block, pos)
        new_blocks.append(block)
    set_blocks(shell, new_blocks, [types[src] for src in layout] if types else None)
    return shell


def state_dict_hash(model: nn.Module) -> str:
    """SHA-256 over a model's state dict (names, dtypes, shapes and bytes)."""
    return hash_state_dict(model.state_dict())


class Emulator:
    """A stand-in model plus its manifest; `model` is a regular transformers causal LM."""

    def __init__(self, model: nn.Module, manifest: Manifest, tokenizer=None):
        self.model = model
        self.manifest = manifest
        self.tokenizer = tokenizer

    # --- adapter access -------------------------------------------------------------------
    def _first_position(self) -> dict[int, int]:
        first: dict[int, int] = {}
        for pos, src in enumerate(self.manifest.layout):
            first.setdefault(src, pos)
        return first

    def adapter_modules(self) -> dict[int, nn.Module]:
        """Adapter blocks by full-model block index."""
        blocks, first = get_blocks(self.model), self._first_position()
        return {b: blocks[first[b]] for b in self.manifest.adapter_blocks}

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Adapter weights keyed `blocks.{full_index}.{param}` (detached clones)."""
        return {
            f"blocks.{b}.{name}": t.detach().clone()
            for b, mod in self.adapter_modules().items()
            for name, t in mod.state_dict().items()
        }

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load adapter weights keyed `blocks.{i}.{param}`; every key must match exactly."""
        load_block_state(self.adapter_modules(), state, what="emulator adapter")

    def freeze_all_but_adapter(self) -> list[nn.Parameter]:
        """Make only adapter-block parameters trainable; return them."""
        for p in self.model.parameters():
            p.requires_grad_(False)
        params = []
        for mod in self.adapter_modules().values():
            for p in mod.parameters():
                p.requires_grad_(True)
                params.append(p)
        return params

    def middle_modules(self) -> dict[int, nn.Module]:
        """Stored non-adapter blocks (the frozen middle) by full-model block index."""
        blocks, first = get_blocks(self.model), self._first_position()
        return {
            b: blocks[first[b]] for b in self.manifest.stored_blocks if b not in self.manifest.adapter_blocks
        }

    # --- persistence ----------------------------------------------------------------------
    def save(self, directory: str | Path) -> str:
        """Write config, tokenizer, de-duplicated weights and manifest; return the emulator hash."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        blocks, first = get_blocks(self.model), self._first_position()
        blocks_attr = paths_for(self.model).blocks
        tensors = {
            k: v.detach().contiguous()
            for k, v in self.model.state_dict().items()
            if not k.startswith(blocks_attr + ".")
        }
        for src in self.manifest.stored_blocks:
            for name, t in blocks[first[src]].state_dict().items():
                tensors[f"blocks.{src}.{name}"] = t.detach().contiguous()
        # Tied embeddings/head would be saved twice otherwise; safetensors refuses shared storage.
        seen: dict[int, str] = {}
        for k in list(tensors):
            ptr = tensors[k].data_ptr()
            if ptr in seen:
                tensors[k] = tensors[k].clone()
            seen[ptr] = k
        save_file(tensors, str(out / WEIGHTS), metadata={"format": "offsite-emulator"})
        self.model.config.save_pretrained(out)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(out)
        self.manifest.emulator_hash = ""
        (out / MANIFEST).write_text(json.dumps(asdict(self.manifest), indent=2) + "\n")
        digest = hash_directory(out, exclude={MANIFEST})
        self.manifest.emulator_hash = digest
        (out / MANIFEST).write_text(json.dumps(asdict(self.manifest), indent=2) + "\n")
        return digest


def load_block_state(modules: dict[int, nn.Module], state: dict[str, torch.Tensor], what: str) -> None:
    """Copy `blocks.{i}.{param}` tensors into modules[i] by name, checking names and shapes."""
    expected = {f"blocks.{b}.{n}": t for b, m in modules.items() for n, t in m.state_dict().items()}
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise KeyError(f"{what}: adapter keys do not match (missing {missing[:5]}, unexpected {extra[:5]})")
    with torch.no_grad():
        for key, target in expected.items():
            src = state[key]
            if tuple(src.shape) != tuple(target.shape):
                raise ValueError(
                    f"{what}: {key} has shape {tuple(src.shape)}, expected {tuple(target.shape)}"
                )
            target.copy_(src.to(target.dtype))


def read_manifest(directory: str | Path) -> Manifest:
    """Read an emulator directory's manifest."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not an emulator directory (no {MANIFEST})")
    data = json.loads(path.read_text())
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported emulator format {data.get('format_version')!r}")
    return Manifest(**data)


def load_emulator(directory: str | Path, verify: bool = True, dtype: torch.dtype = torch.float32) -> Emulator:
    """Load an emulator saved by `Emulator.save`, re-tying shared blocks; verify its hash."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if verify:
        digest = hash_directory(directory, exclude={MANIFEST})
        if digest != manifest.emulator_hash:
            raise ValueError(
                f"emulator at {directory} does not match its manifest hash "
                f"({digest[:12]} != {manifest.emulator_hash[:12]}): files changed or incomplete"
            )
    config = AutoConfig.from_pretrained(directory)
    saved_types = getattr(config, "layer_types", None)
    source_types = None
    if saved_types:
        source_types = {src: t for src, t in zip(manifest.layout, saved_types, strict=True)}
        config.layer_types = saved_types[:1]
    config.num_hidden_layers = 1
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tensors = load_file(str(directory / WEIGHTS))
    block_proto = get_blocks(model)[0]
    sources: dict[int, nn.Module] = {}
    for src in manifest.stored_blocks:
        block = copy.deepcopy(block_proto)
        prefix = f"blocks.{src}."
        block.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        sources[src] = block
    index = [sources.get(i) for i in range(manifest.num_source_blocks)]
    blocks_attr = paths_for(model).blocks
    rest = {k: v for k, v in tensors.items() if not k.startswith("blocks.")}
    types = (
        [source_types.get(i, saved_types[0]) for i in range(manifest.num_source_blocks)]
        if source_types
        else None
    )
    built = assemble(model, manifest.layout, source_blocks=index, source_layer_types=types)
    missing, unexpected = built.load_state_dict(rest, strict=False)
    missing = [k for k in missing if not k.startswith(blocks_attr + ".")]
    if missing or unexpected:
        raise ValueError(f"emulator weights incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}")
    built.tie_weights()
    built.to(dtype)
    built.eval()
    tokenizer = None
    if (directory / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(directory)
    return Emulator(built, manifest, tokenizer)
