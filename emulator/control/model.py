"""The tiny control model: a small Llama on the template's vocabulary whose logits are an additive shift."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

CONTROL_METHOD = "control"  # the stand-in manifest's method when the stand-in is a control template


def control_config(
    template_config, tokenizer, layers: int = 2, hidden: int = 64, heads: int = 4
) -> LlamaConfig:
    """A Llama config for a control model on the template's vocabulary (logits width = template's)."""
    if layers < 1 or hidden < heads or hidden % heads:
        raise ValueError(
            f"control model needs layers >= 1 and hidden divisible by heads; got {layers}, {hidden}"
        )
    return LlamaConfig(
        vocab_size=template_config.vocab_size,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=getattr(template_config, "max_position_embeddings", 256),
        tie_word_embeddings=False,  # a zero head must not zero the input embeddings
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def new_control_model(
    config: LlamaConfig, seed: int = 0, template: nn.Module | None = None
) -> LlamaForCausalLM:
    """A fresh control model whose LM head is zero, so its initial shift is exactly 0.

    With a template, the input embeddings start as the template's embeddings projected onto their
    top principal directions (scaled to the fresh init's spread): word knowledge for free.
    """
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.zero_()
        if template is not None:
            emb = model.get_input_embeddings().weight
            src = template.get_input_embeddings().weight.detach().float()
            if src.shape[0] != emb.shape[0]:
                raise ValueError(f"template has {src.shape[0]} embeddings, control model {emb.shape[0]}")
            centred = src - src.mean(0, keepdim=True)
            _, _, v = torch.linalg.svd(centred, full_matrices=False)
            proj = centred @ v[: emb.shape[1]].T
            emb.copy_(proj * (emb.std() / proj.std().clamp(min=1e-8)))
    return model.eval()


def control_from_state(config_dict: dict, state: dict[str, torch.Tensor]) -> LlamaForCausalLM:
    """A control model built from its config dict and a full state dict (an aggregated global adapter)."""
    model = LlamaForCausalLM(LlamaConfig.from_dict(config_dict))
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise KeyError(
            f"control state does not fit its config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.eval()


def load_control(path: str | Path) -> tuple[nn.Module, object]:
    """(control model, its tokenizer) from a directory written by `save_control`."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a control model directory (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


def save_control(model: nn.Module, tokenizer, path: str | Path) -> Path:
    """Write the control model and the template tokenizer it was trained with as a HF checkpoint."""
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def combined_logprobs(template_logits: torch.Tensor, control_logits: torch.Tensor) -> torch.Tensor:
    """log softmax(log_softmax(z_template) + z_control), in fp32, over the last dimension."""
    return torch.log_softmax(torch.log_softmax(template_logits.float(), -1) + control_logits.float(), -1)
