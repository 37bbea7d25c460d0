"""A client's training step on a GPU: the FlowerTune-style baseline against Offsite's stand-ins.

    python -m bench.gpu                 # 1.1B random-init Llama, bf16, batch 8 x 512 tokens
    python -m bench.gpu --seq-len 1024 --batch 4 --steps 12

Rows, all on one random-init Llama of >= 1B parameters (TinyLlama's shape: hidden 2048, 22 blocks,
GQA 32/4 heads, vocabulary 32,000), weights in bf16, forward under bf16 autocast, trainable
parameters in fp32 (AdamW, gradient clipping as in client training):
- baseline (full + LoRA): the whole model on the client, LoRA rank 8 on every block (FlowerTune);
- offsite (crash + LoRA) / (uniform + LoRA): the stand-in (2 + 2 adapter blocks around a 3-block
  middle), LoRA rank 8 on the adapter blocks only, as a site trains it with lora-rank = 8;
- offsite (uniform, whole blocks): the same stand-in training its adapter blocks whole (lora-rank = 0).
Per row: median step seconds (CUDA-synchronised, warm-up steps dropped), tokens/s, peak CUDA memory
(torch.cuda.max_memory_allocated, weights included) and the weights alone. Writes bench/results/gpu.json.
It needs a CUDA device and refuses to run without one.
"""

from __future__ import annotations

import copy
import gc
import statistics
import sys
import time
from typing import Annotated

import torch
import typer
from torch import nn

from bench.client_step import param_counts, random_batch
from bench.harness import save_json
from bench.machine import machine_info

RANK = 8
SHAPE = (2, 2, 3)  # adapter blocks first, last, middle blocks kept
# TinyLlama-1.1B's shape: 1,100,048,384 parameters.
LLAMA_1B = dict(
    vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
    num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
    bos_token_id=1, eos_token_id=2, pad_token_id=0,
)  # fmt: skip


def random_llama(device: torch.device, dtype: torch.dtype, **shape) -> nn.Module:
    """A random-init Llama built straight on `device` in `dtype` (no full-size CPU copy first)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**{**LLAMA_1B, **shape})
    with torch.device(device):
        return LlamaForCausalLM._from_config(config, dtype=dtype).eval()


def standins(full: nn.Module, batch: dict) -> dict:
    """CRaSh and uniform stand-ins of `full` (CRaSh calibrated on a slice of the batch)."""
    from emulator.derive import EmulatorOptions, derive_emulator

    calib = (batch["input_ids"][:4, :128], batch["attention_mask"][:4, :128])
    with torch.no_grad():
        return {m: derive_emulator(full, EmulatorOptions(m, *SHAPE), calib) for m in ("crash", "uniform")}


def trainable(model: nn.Module, positions: list[int], lora_rank: int) -> tuple[nn.Module, list[nn.Parameter]]:
    """(model, fp32 trainable params): LoRA on `positions`, or those blocks whole when lora_rank is 0."""
    from emulator.blocks import get_blocks
    from emulator.plugin import add_lora

    if lora_rank:
        model = add_lora(model, positions, lora_rank)
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        model.requires_grad_(False)
        blocks = get_blocks(model)
        params = list({id(p): p for i in positions for p in blocks[i].parameters()}.values())
        for p in params:
            p.requires_grad_(True)
    for p in params:
        p.data = p.data.float()  # fp32 master weights for what trains; the frozen rest stays bf16
    return model, params


def time_steps(model: nn.Module, params: list, batch: dict, steps: int, warmup: int, precision: str) -> list:
    """Seconds of each step after `warmup` (forward+loss under autocast, backward, clip, AdamW)."""
    from emulator.train import autocast, supervised_loss

    device = batch["input_ids"].device
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    out = []
    for step in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        with autocast(device, precision):
            loss = supervised_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if step >= warmup:
            out.append(time.perf_counter() - t0)
    model.eval()
    return out


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so wall time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_row(model, positions, lora_rank, batch, steps, warmup, precision) -> dict:
    """One row: the model moved onto the batch's device, trained, timed; CUDA peaks since it arrived."""
    device = batch["input_ids"].device
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model.to(device)
    model, params = trainable(model, positions, lora_rank)
    weights = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else None
    times = time_steps(model, params, batch, steps, warmup, precision)
    step = statistics.median(times)
    counts = param_counts(model)
    model.cpu()
    return {
        "step_s_median": step,
        "tokens_per_s": int(batch["attention_mask"].sum()) / step,
        "peak_cuda_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "weights_cuda_mb": weights,
        **{f"params_{k}": v for k, v in counts.items()},
    }


def run_rows(device: torch.device, batch_size: int, seq_len: int, steps: int, warmup: int,
             precision: str = "bf16", **shape) -> dict:  # fmt: skip
    """Every row on `device`; emulators derived first, then each model alone on the device."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    full = random_llama(device, dtype, **shape)
    n_params = sum(p.numel() for p in full.parameters())
    batch = {k: v.to(device) for k, v in random_batch(full.config.vocab_size, batch_size, seq_len).items()}
    emus = standins(full, batch)
    models = {m: emu.model.cpu() for m, emu in emus.items()}  # off the device while another row trains
    models["uniform, whole"] = copy.deepcopy(models["uniform"])  # before a LoRA row wraps the original
    rows = {}
    n = full.config.num_hidden_layers
    rows["baseline (full + LoRA)"] = measure_row(full, list(range(n)), RANK, batch, steps, warmup, precision)
    del full
    gc.collect()
    plans = [
        ("offsite (crash + LoRA)", "crash", "crash", RANK),
        ("offsite (uniform + LoRA)", "uniform", "uniform", RANK),
        ("offsite (uniform, whole blocks)", "uniform", "uniform, whole", 0),
    ]
    for name, method, key, rank in plans:
        manifest = emus[method].manifest
        row = measure_row(models.pop(key), manifest.adapter_positions, rank, batch, steps, warmup, precision)
        rows[name] = {**row, "layout": manifest.layout}
        gc.collect()
    base = rows["baseline (full + LoRA)"]
    for row in rows.values():
        row["speedup_vs_baseline"] = base["step_s_median"] / row["step_s_median"]
        if row["peak_cuda_mb"] and base["peak_cuda_mb"]:
            row["peak_cuda_vs_baseline"] = row["peak_cuda_mb"] / base["peak_cuda_mb"]
    return {"full_params": n_params, "rows": rows}


def main(
    batch_size: Annotated[int, typer.Option("--batch", help="Sequences per step.")] = 8,
    seq_len: Annotated[int, typer.Option(help="Tokens per sequence (every one supervised).")] = 512,
    steps: Annotated[int, typer.Option(help="Timed steps per row.")] = 10,
    warmup: Annotated[int, typer.Option(help="Untimed steps first (allocator, kernels).")] = 3,
    device: Annotated[str, typer.Option(help="cuda or cuda:N.")] = "cuda",
) -> None:
    """Run every row on the GPU and write bench/results/gpu.json."""
    from emulator.train import DeviceError, resolve_device

    try:
        if not torch.cuda.is_available() or not device.startswith("cuda"):
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise DeviceError(
                f"it measures CUDA step time and memory, and this machine has no usable CUDA device "
                f"(torch {torch.__version__}, {build}; --device {device!r})"
            )
        dev = resolve_device(device, key="--device")
    except DeviceError as exc:
        print(f"bench.gpu needs a CUDA GPU: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    torch.backends.cuda.matmul.allow_tf32 = True
    start = time.perf_counter()
    result = run_rows(dev, batch_size, seq_len, steps, warmup)
    result.update(
        precision="bf16 weights, bf16 autocast, fp32 trainable parameters",
        batch=batch_size, seq_len=seq_len, steps=steps, warmup=warmup, lora_rank=RANK,
        shape={"first": SHAPE[0], "last": SHAPE[1], "keep": SHAPE[2]},
        gpu=torch.cuda.get_device_name(dev), seconds=time.perf_counter() - start, machine=machine_info(),
    )  # fmt: skip
    out = save_json(result, "gpu.json")
    for name, row in result["rows"].items():
        print(f"{name:34s} {row['step_s_median'] * 1000:8.1f} ms/step {row['tokens_per_s']:10.0f} tok/s "
              f"peak {row['peak_cuda_mb']:8.0f} MiB  x{row['speedup_vs_baseline']:.2f}")  # fmt: skip
    print(f"written {out}")


if __name__ == "__main__":
    typer.run(main)
