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
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from emulator.blocks import (
    get_blocks,
    get_path,
    paths_for,
    select_layers,
    set_blocks,
    set_layer_index,
    text_config,
)
from protocols.hashing import hash_directory, hash_state_dict

MANIFEST = "manifest.json"
WEIGHTS = "emulator.safetensors"
SOURCE_CONFIG = "source_config.json"
SOURCE_ATTR = "_offsite_source_config"
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


def tied_clone(block: nn.Module, memo: dict | None = None) -> nn.Module:
    """A new module object that shares every parameter and buffer tensor with `block`."""
    memo = dict(memo or {})
    memo.update({id(t): t for t in list(block.parameters()) + list(block.buffers())})
    return copy.deepcopy(block, memo)


def _shell_copy(model: nn.Module) -> nn.Module:
    """Deep-copy a model without its blocks (so copying a big model does not double its memory)."""
    parent_path, _, attr = paths_for(model).blocks.rpartition(".")
    parent = get_path(model, parent_path) if parent_path else model
    blocks = getattr(parent, attr)
    setattr(parent, attr, nn.ModuleList())
    try:
        shell = copy.deepcopy(model)
    finally:
        setattr(parent, attr, blocks)
    return shell


def _config_memo(old, new) -> dict[int, object]:
    """Deep-copy memo that points copied blocks at the new model's config (and its text config)."""
    return {id(o): n for o, n in zip(_config_objects(old), _config_objects(new), strict=True)}


def _config_objects(config) -> list:
    text = text_config(config)
    return [config] if text is config else [config, text]


def assemble(
    model: nn.Module,
    layout: list[int],
    source_blocks: Mapping[int, nn.Module] | list[nn.Module | None] | None = None,
    source_config=None,
) -> nn.Module:
    """Build a model whose position p runs block layout[p]; repeated indices share weights.

    `source_blocks` are indexed by full-model block index (defaults to `model`'s own blocks) and
    `source_config` describes them (defaults to `model.config`). The new model's config follows
    the layout: per-layer fields (layer_types: sliding or full attention, ...) at position p are
    those of block layout[p], and the copied blocks read that config. `model` is left unchanged.
    """
    blocks_src = list(get_blocks(model)) if source_blocks is None else source_blocks
    shell = _shell_copy(model)
    select_layers(shell.config, layout, source=source_config or model.config)
    memo = _config_memo(model.config, shell.config)
    keep = {id(c): c for c in _config_objects(shell.config)}
    owned: dict[int, nn.Module] = {}
    new_blocks = []
    for pos, src in enumerate(layout):
        if src not in owned:
            owned[src] = copy.deepcopy(blocks_src[src], dict(memo))
            block = owned[src]
        else:
            block = tied_clone(owned[src], keep)
        set_layer_index(block, pos)
        new_blocks.append(block)
    set_blocks(shell, new_blocks)
    # Kept so save() can record it: load_emulator rebuilds each block from it at its own index.
    shell.__dict__[SOURCE_ATTR] = copy.deepcopy(source_config or model.config)
    return shell


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor a module holds by name: its state dict plus non-persistent buffers (rotary tables, masks)."""
    out = dict(model.state_dict())
    for name, buf in model.named_buffers(remove_duplicate=False):
        out.setdefault(name, buf)
    return out


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
            for k, v in model_tensors(self.model).items()
            if not k.startswith(blocks_attr + ".")
        }
        for src in self.manifest.stored_blocks:
            for name, t in model_tensors(blocks[first[src]]).items():
                tensors[f"blocks.{src}.{name}"] = t.detach().contiguous()
        # Tied embeddings/head would be saved twice otherwise; safetensors refuses shared storage.
        seen: dict[int, str] = {}
        for k in list(tensors):
            ptr = tensors[k].data_ptr()
            if ptr in seen:
                tensors[k] = tensors[k].clone()
            seen[ptr] = k
        save_file(tensors, str(out / WEIGHTS), metadata={"format": "offsite-emulator"})
        # The class name, for families whose text config AutoModelForCausalLM does not map (Mllama, Emu3).
        self.model.config.architectures = [type(self.model).__name__]
        self.model.config.save_pretrained(out)
        source = self.model.__dict__.get(SOURCE_ATTR)
        if source is not None:
            source.architectures = [type(self.model).__name__]
            source.to_json_file(out / SOURCE_CONFIG)
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
    source = None
    if (directory / SOURCE_CONFIG).exists():
        source = type(config).from_json_file(str(directory / SOURCE_CONFIG))
    # Blocks are rebuilt from the full model's config at their own index when it was saved (so
    # index rules such as "the first k blocks are dense" hold); else from the emulator's config
    # at the position that first runs them.
    first = {}
    for pos, src in enumerate(manifest.layout):
        first.setdefault(src, pos)
    key = (lambda src: src) if source is not None else first.__getitem__
    skeleton_config = source if source is not None else config
    stored = manifest.stored_blocks
    model = _skeleton(skeleton_config, [key(s) for s in stored], dtype)
    tensors = load_file(str(directory / WEIGHTS))
    _fill(model, tensors, stored, lambda: _reference(config, [first[s] for s in stored], dtype))
    blocks = get_blocks(model)
    built = assemble(
        model,
        [key(s) for s in manifest.layout],
        source_blocks={key(s): blocks[j] for j, s in enumerate(stored)},
        source_config=skeleton_config,
    )
    if source is None:
        del built.__dict__[SOURCE_ATTR]  # its "source" is the emulator's own positions, not the full model
    built.tie_weights()
    built.to(dtype)
    built.eval()
    tokenizer = None
    if (directory / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(directory)
    return Emulator(built, manifest, tokenizer)


def _skeleton(config, keep: list[int], dtype: torch.dtype) -> nn.Module:
    """The model of `config` with only blocks `keep`, allocated but not initialised (weights come from a file)."""
    with torch.device("meta"):
        model = new_model(copy.deepcopy(config), dtype)
    blocks = get_blocks(model)
    set_blocks(model, [blocks[i] for i in keep])
    return model.to_empty(device="cpu")


def _reference(config, positions: list[int], dtype: torch.dtype) -> nn.Module:
    """A randomly initialised model of the emulator's config at `positions`: constants older files lack."""
    config = copy.deepcopy(config)
    select_layers(config, positions)
    return new_model(config, dtype)


def new_model(config, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A randomly initialised causal LM of the class the config names (text configs the Auto class lacks, too)."""
    name = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, name, None) if name else None
    if cls is None:
        return AutoModelForCausalLM.from_config(config, dtype=dtype)
    return cls._from_config(config, dtype=dtype)


def _fill(model: nn.Module, tensors: dict[str, torch.Tensor], stored: list[int], reference) -> None:
    """Copy every saved tensor into `model` (block j holds stored[j]); borrow unsaved buffers from `reference()`."""
    blocks_attr = paths_for(model).blocks
    pattern = re.compile(rf"^{re.escape(blocks_attr)}\.(\d+)\.(.+)$")
    ref, missing, used = None, [], set()
    for name, target in model_tensors(model).items():
        m = pattern.match(name)
        key = f"blocks.{stored[int(m.group(1))]}.{m.group(2)}" if m else name
        src = tensors.get(key)
        if src is None and name in dict(model.named_buffers(remove_duplicate=False)):
            ref = reference() if ref is None else ref
            src = model_tensors(ref).get(name)
        if src is None or tuple(src.shape) != tuple(target.shape):
            missing.append(key)
            continue
        used.add(key)
        with torch.no_grad():
            target.copy_(src.to(target.dtype))
    unexpected = sorted(set(tensors) - used)
    if missing or unexpected:
        raise ValueError(
            f"emulator weights do not fit the model its config builds: missing or misshapen {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
