"""One client's training step, measured: time and tokens/s in this process, peak memory in a fresh one.

Peak RSS only ever grows within a process, so memory is measured in a child process per
configuration (`python -m bench.client_step '<json spec>'`): it records the RSS after imports (the
runtime floor: Python, torch, transformers, peft), loads the stand-in from disk as a client does,
trains, and reports its peak RSS. `peak - floor` is what the model and its training cost.
"""

from __future__ import annotations

import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from bench.rss import rss_mb
from emulator.emulator import Emulator
from emulator.plugin import add_lora, attach_adapter, lora_state, lora_trainable


def training_model(
    emu: Emulator, adapter: dict[str, torch.Tensor], lora_rank: int, train_lora_a: bool
) -> tuple[nn.Module, list[nn.Parameter]]:
    """(model, trainable params) set up exactly as client.trainer.train_adapter sets them up."""
    model = attach_adapter(emu, adapter, lora_rank)
    if lora_rank == 0:
        return model, emu.freeze_all_but_adapter()
    return model, lora_trainable(model, train_lora_a)


def lora_adapter(emu: Emulator, lora_rank: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The round-0 LoRA adapter the coordinator sends for this stand-in (seeded, B = 0).

    Same recipe as coordinator.federation.loop.initial_adapter, without importing the coordinator into
    a process that plays a client.
    """
    torch.manual_seed(seed)
    peft_model = add_lora(copy.deepcopy(emu.model), emu.manifest.adapter_positions, lora_rank)
    return {k: v.float() for k, v in lora_state(peft_model, emu.manifest.layout).items()}


def random_batch(vocab: int, batch: int, seq_len: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A (batch, seq_len) batch of random ids, every token supervised (a synthetic long-sequence step)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq_len), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def time_steps(model: nn.Module, params: list[nn.Parameter], batch: dict, steps: int) -> list[float]:
    """Seconds of each of `steps` AdamW steps (forward, backward, clip, update) on one fixed batch."""
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(time.perf_counter() - t0)
    model.eval()
    return out


def param_counts(model: nn.Module) -> dict[str, int]:
    """Unique stored parameters (weight-tied blocks counted once) and trainable ones."""
    seen: dict[int, nn.Parameter] = {}
    for p in model.parameters():  # parameters() already yields each shared tensor once
        seen[id(p)] = p
    return {
        "stored": sum(p.numel() for p in seen.values()),
        "trainable": sum(p.numel() for p in seen.values() if p.requires_grad),
    }


def peak_rss_mb() -> float:
    """This process's own peak RSS in MiB (VmHWM).

    Not getrusage's ru_maxrss: Linux carries that over from the parent across fork and exec, so a
    child of a big process would report the parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: best effort


def _import_runtime() -> None:
    """Import every library the client uses, so the RSS floor holds the runtime and not the model."""
    import peft  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    import emulator.data  # noqa: F401
    import emulator.train  # noqa: F401


def measure(spec: dict) -> dict:
    """Run one spec in this process (see module docstring); return floor/peak RSS and step timings."""
    from emulator.emulator import load_emulator

    torch.set_num_threads(int(spec.get("threads", 1)))
    _import_runtime()
    floor = rss_mb()
    emu = load_emulator(spec["standin"], verify=False)
    rank = int(spec["lora_rank"])
    adapter = lora_adapter(emu, rank, spec.get("seed", 0))
    model, params = training_model(emu, adapter, rank, bool(spec.get("train_lora_a", False)))
    loaded = rss_mb()
    if spec.get("seq_len"):
        vocab = model.get_input_embeddings().weight.shape[0]
        batch = random_batch(vocab, spec["batch_size"], spec["seq_len"], spec.get("seed", 0))
        times = time_steps(model, params, batch, int(spec["steps"]))
        tokens = int(batch["attention_mask"].sum()) * len(times)
        seconds = sum(times[1:]) * len(times) / max(1, len(times) - 1)  # first step warms up allocators
    else:
        from emulator.data import load_task
        from emulator.train import tune

        examples = load_task(spec.get("task", "wn-category"), "train")[: spec.get("examples", 256)]
        stats = tune(model, emu.tokenizer, examples, params, steps=int(spec["steps"]),
                     batch_size=spec["batch_size"], seed=spec.get("seed", 0))  # fmt: skip
        times, tokens, seconds = [stats.seconds / stats.steps], stats.tokens, stats.seconds
    peak = peak_rss_mb()
    return {
        "rss_floor_mb": floor,
        "rss_loaded_mb": loaded,
        "peak_rss_mb": peak,
        "peak_minus_floor_mb": peak - floor,
        "step_s_median": statistics.median(times),
        "tokens_per_s": tokens / seconds if seconds else None,
        **{f"params_{k}": v for k, v in param_counts(model).items()},
    }


def measure_in_child(spec: dict, timeout: float = 900) -> dict:
    """`measure(spec)` in a fresh Python process (so its peak RSS is its own)."""
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "bench.client_step", json.dumps(spec)],
        cwd=root, capture_output=True, text=True, timeout=timeout,
        env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
             "PATH": "/usr/bin:/bin", **_inherit()},
    )  # fmt: skip
    if proc.returncode:
        raise RuntimeError(f"client_step child failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _inherit() -> dict:
    return {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "PYTHONPATH", "LANG", "TMPDIR")}


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
