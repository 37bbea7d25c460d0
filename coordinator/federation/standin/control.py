"""The control-model stand-in (`standin = "control"`): the template ships once, the control model is the adapter.

The template is saved as an identity emulator (every block kept, no adapter blocks) whose manifest
has method "control" and, in `options`, the control model's config, its seed, the template dropout
used in training and the port's alpha. So it goes through the same signing, hashing, caching and
round loop as an emulator, and the global "adapter" is the control model's full state dict,
aggregated like any set of plain tensors. On the server, "emulator" figures mean the template and
"plug-in" means the full model with the ported control model.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig

from coordinator.config import FederationConfig
from emulator.control.model import CONTROL_METHOD, control_config, control_from_state, new_control_model
from emulator.control.port import controlled_accuracy
from emulator.control.token_map import TokenMap, identity_map, map_tokenizers
from emulator.data import Example
from emulator.emulator import Emulator, Manifest, state_dict_hash
from emulator.zoo import load_model

_MAPS: dict[tuple[int, int], TokenMap] = {}


def build(cfg: FederationConfig, full=None, tokenizer=None) -> Emulator:
    """The template named by `control-template`, wrapped as an identity emulator with the control recipe."""
    template, tok = load_model(cfg.control_template)
    config = control_config(template.config, tok, cfg.control_layers, cfg.control_hidden)
    n = template.config.num_hidden_layers
    manifest = Manifest(
        method=CONTROL_METHOD,
        layout=list(range(n)),
        adapter_blocks=[],
        num_source_blocks=n,
        model_type=template.config.model_type,
        source_hash=state_dict_hash(template),
        options={
            "template": cfg.control_template,
            "control_config": config.to_dict(),
            "seed": cfg.seed,
            "template_dropout": cfg.control_dropout,
            "alpha": cfg.control_alpha,
        },
    )
    return Emulator(template, manifest, tok)


def initial_adapter(cfg: FederationConfig, full, emu: Emulator) -> dict[str, torch.Tensor]:
    """Round-0 global adapter: a fresh control model (zero LM head: shift 0; embeddings from the template)."""
    options = emu.manifest.options
    config = LlamaConfig.from_dict(options["control_config"])
    model = new_control_model(config, seed=int(options["seed"]), template=emu.model)
    return {k: v.detach().float().clone() for k, v in model.state_dict().items()}


def _map_for(tok, control_tok) -> TokenMap:
    key = (id(tok), id(control_tok))
    if key not in _MAPS:
        _MAPS[key] = map_tokenizers(tok, control_tok)
    return _MAPS[key]


def evaluate(
    full, emu: Emulator, tok, adapter: dict[str, torch.Tensor], lora_rank: int, eval_set: list[Example]
) -> dict[str, float]:
    """Accuracy (%) of the full model with the ported control ("plug-in") and of template + control."""
    control = control_from_state(emu.manifest.options["control_config"], adapter)
    alpha = float(emu.manifest.options.get("alpha", 1.0))
    ctok = emu.tokenizer
    return {
        "plug-in": controlled_accuracy(full, tok, control, ctok, _map_for(tok, ctok), eval_set, alpha),
        "emulator FT": controlled_accuracy(emu.model, ctok, control, ctok, identity_map(len(ctok)), eval_set),
    }
