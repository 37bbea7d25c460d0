"""How client and round costs grow: with model depth, clients per round and sequence length.

    python -m bench.growth            # 12/24/48 blocks, 2/4/8/16 clients, 32..256 tokens (36 min on 2 busy cores)
    python -m bench.growth --quick    # smoke run

- depth: random-init Llama (hidden 192, like zoo:base) of 12, 24 and 48 blocks; stand-ins derived
  and saved as the coordinator would (CRaSh 2+2 adapter, 3 clusters; uniform 2+3+2; the identity
  "full" stand-in of the baseline), loaded from disk as a client would. Client step time (batch 16 x 64
  tokens, interleaved across variants) and peak memory (child process each).
- sequence length: zoo:base, Offsite (CRaSh) vs baseline, batch 8 x 32/64/128/256 tokens.
- clients per round: zoo:base federations on the in-process grid with 2/4/8/16 clients per round;
  round wall time, the clients' summed training time, and bytes per round.
Writes bench/results/benchmark-growth.json and docs/img/benchmark-growth.png.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated

import torch
import typer

from bench.client_step import lora_adapter, measure_in_child, random_batch, time_steps, training_model
from bench.harness import overrides_for, run_inprocess, save_json
from bench.machine import machine_info

ROOT = Path(__file__).resolve().parent.parent
PNG = ROOT / "docs" / "img" / "benchmark-growth.png"
RANK = 8
STANDIN_VARIANTS = {"offsite (crash)": "crash", "offsite (uniform)": "uniform", "baseline (full)": "full"}


def random_llama(depth: int, hidden: int = 192, vocab: int = 4096, seed: int = 0) -> torch.nn.Module:
    """A random-init Llama of `depth` blocks shaped like zoo:base (hidden 192, MLP 512, 6 heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=depth, num_attention_heads=6, num_key_value_heads=6,
                         max_position_embeddings=512, bos_token_id=0, eos_token_id=1, pad_token_id=2)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def save_standins(
    full, tokenizer, methods: dict[str, str], out: Path, calib=None, shape: tuple[int, int, int] = (2, 2, 3)
) -> dict[str, dict]:
    """Derive and save each stand-in (as `coordinator.federation.standin.emulator` does); directory and download bytes.

    `calib` is CRaSh's calibration (input_ids, attention_mask); default: random ids (random-init models).
    `shape` is (adapter blocks first, adapter blocks last, middle blocks kept).
    """
    from emulator.derive import EmulatorOptions, derive_emulator

    if calib is None:
        vocab = full.get_input_embeddings().weight.shape[0]
        batch = random_batch(vocab, 16, 32, seed=1)
        calib = (batch["input_ids"], batch["attention_mask"])
    saved = {}
    for name, method in methods.items():
        emu = derive_emulator(full, EmulatorOptions(method, *shape), calib, tokenizer)
        emu.model.to(torch.float16)  # shipped in fp16 (standin-dtype default)
        directory = out / method
        emu.save(directory)
        saved[name] = {"dir": directory, "bytes": sum(f.stat().st_size for f in directory.iterdir()),
                       "layout": emu.manifest.layout}  # fmt: skip
    return saved


def step_times(dirs: dict[str, Path], batch: dict, steps: int, reps: int) -> dict[str, float]:
    """Median client step seconds per variant, interleaved over reps (first step of each rep dropped)."""
    from emulator.emulator import load_emulator

    emus = {v: load_emulator(d, verify=False) for v, d in dirs.items()}
    times: dict[str, list[float]] = {v: [] for v in dirs}
    for _ in range(reps):
        for v, emu in emus.items():
            e = copy.deepcopy(emu)
            model, params = training_model(e, lora_adapter(e, RANK), RANK, v.startswith("baseline"))
            times[v] += time_steps(model, params, batch, steps + 1)[1:]
    return {v: statistics.median(t) for v, t in times.items()}


def memory(dirs: dict[str, Path], batch_size: int, seq_len: int, steps: int = 2) -> dict[str, dict]:
    """Peak memory per variant, each in a fresh child process."""
    out = {}
    for v, d in dirs.items():
        r = measure_in_child({"standin": str(d), "lora_rank": RANK, "train_lora_a": v.startswith("baseline"),
                              "steps": steps, "batch_size": batch_size, "seq_len": seq_len})  # fmt: skip
        out[v] = {k: r[k] for k in ("peak_minus_floor_mb", "peak_rss_mb", "rss_floor_mb", "params_stored")}
    return out


def depth_growth(depths: list[int], work: Path, steps: int, reps: int) -> list[dict]:
    """Client step time, peak memory and stand-in bytes vs model depth."""
    from transformers import AutoTokenizer

    from emulator.zoo.specs import model_path

    tok = AutoTokenizer.from_pretrained(model_path("base"), local_files_only=True)
    rows = []
    for depth in depths:
        saved = save_standins(random_llama(depth), tok, STANDIN_VARIANTS, work / f"depth-{depth}")
        dirs = {v: s["dir"] for v, s in saved.items()}
        batch = random_batch(4096, 16, 64)
        t, m = step_times(dirs, batch, steps, reps), memory(dirs, 16, 64)
        for v in dirs:
            rows.append({"depth": depth, "variant": v, "step_s": t[v], "standin_bytes": saved[v]["bytes"],
                         "compute_depth": len(saved[v]["layout"]), **m[v]})  # fmt: skip
        print(f"[growth] depth {depth}: " + ", ".join(f"{v} {t[v]:.3f} s" for v in dirs), flush=True)
    return rows


def seq_growth(lengths: list[int], work: Path, steps: int, reps: int) -> list[dict]:
    """Client step time, tokens/s and peak memory vs sequence length, on zoo:base."""
    from emulator.zoo import load_model

    full, tok = load_model("zoo:base")
    variants = {"offsite (crash)": "crash", "baseline (full)": "full"}
    saved = save_standins(full, tok, variants, work / "seq")
    dirs = {v: s["dir"] for v, s in saved.items()}
    rows = []
    for n in lengths:
        batch = random_batch(4096, 8, n)
        t, m = step_times(dirs, batch, steps, reps), memory(dirs, 8, n)
        for v in dirs:
            rows.append({"seq_len": n, "variant": v, "step_s": t[v], "tokens_per_s": 8 * n / t[v], **m[v]})
        print(f"[growth] seq {n}: " + ", ".join(f"{v} {t[v]:.3f} s" for v in dirs), flush=True)
    return rows


def clients_growth(counts: list[int], work: Path, local_steps: int) -> list[dict]:
    """Round wall time, clients' training time and bytes per round vs clients per round (in-process grid)."""
    rows = []
    sites = max(counts)
    for n in counts:
        for v in ("offsite", "baseline"):
            ov = overrides_for(v, **{"rounds": 2, "clients-per-round": n, "local-steps": local_steps,
                                     "eval-size": 20, "calibration-texts": 64})  # fmt: skip
            report = run_inprocess(ov, sites, work, f"clients-{v}-{n}")
            last = report["rounds"][-1]  # round 2: the stand-in is already cached everywhere
            ok = [c for c in last["clients"] if c["status"] == "ok"]
            rows.append({"clients": n, "variant": v, "round_wall_s": last["wall_s"],
                         "clients_train_s": sum(c["train-seconds"] for c in ok),
                         "bytes_per_round": sum(c["bytes_down"] + c["bytes_up"] for c in last["clients"])})  # fmt: skip
        print(f"[growth] {n} clients/round done", flush=True)
    return rows


def _colour(variant: str) -> str:
    """One colour per row in every panel: baseline orange, uniform green, CRaSh (Offsite's default) blue."""
    return "tab:orange" if "baseline" in variant else "tab:green" if "uniform" in variant else "tab:blue"


def plot(result: dict, path: Path) -> Path:
    """Six panels: time (top) and memory/bytes (bottom) vs depth, clients per round, sequence length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 3, figsize=(14, 8))

    def lines(a, rows, x, y, scale=1.0):
        for v in dict.fromkeys(r["variant"] for r in rows):
            pts = [(r[x], r[y] * scale) for r in rows if r["variant"] == v]
            a.plot(*zip(*pts, strict=True), marker="o", label=v, color=_colour(v))
        a.set_xscale("log", base=2)
        a.set_xticks(sorted({r[x] for r in rows}), [str(t) for t in sorted({r[x] for r in rows})])
        a.grid(alpha=0.3)
        a.legend(fontsize=8)

    lines(ax[0, 0], result["depth"], "depth", "step_s")
    ax[0, 0].set(title="client step vs model depth", xlabel="blocks", ylabel="s / step (16 x 64 tokens)")
    lines(ax[1, 0], result["depth"], "depth", "peak_minus_floor_mb")
    ax[1, 0].set(title="client peak memory vs depth", xlabel="blocks", ylabel="MiB above runtime floor")
    lines(ax[0, 1], result["clients"], "clients", "round_wall_s")
    ax[0, 1].set(title="round wall time vs clients per round", xlabel="clients per round", ylabel="s")
    lines(ax[1, 1], result["clients"], "clients", "bytes_per_round", 1e-6)
    ax[1, 1].set(title="bytes per round (down + up)", xlabel="clients per round", ylabel="MB")
    lines(ax[0, 2], result["seq"], "seq_len", "step_s")
    ax[0, 2].set(title="client step vs sequence length", xlabel="tokens", ylabel="s / step (batch 8)")
    lines(ax[1, 2], result["seq"], "seq_len", "peak_minus_floor_mb")
    ax[1, 2].set(
        title="client peak memory vs sequence length", xlabel="tokens", ylabel="MiB above runtime floor"
    )
    fig.suptitle(f"Offsite vs FlowerTune-style baseline: growth ({result['machine']['lscpu'].get('Model name', '')}, "
                 f"{result['machine']['logical_cpus']} CPUs, 1 torch thread)")  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(
    quick: Annotated[bool, typer.Option(help="Smoke run: small sizes, one repetition.")] = False,
    out: Annotated[Path, typer.Option(help="JSON output.")] = Path("bench/results/benchmark-growth.json"),
    png: Annotated[Path, typer.Option(help="Plot output.")] = PNG,
) -> None:
    """Measure cost growth with depth, clients per round and sequence length; write JSON and a PNG."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    depths, counts, lengths = (
        ([12, 24], [2, 4], [32, 64]) if quick else ([12, 24, 48], [2, 4, 8, 16], [32, 64, 128, 256])
    )
    steps, reps = (2, 1) if quick else (2, 2)
    result: dict = {"machine": machine_info(), "quick": quick, "lora_rank": RANK}
    with tempfile.TemporaryDirectory(prefix="offsite-growth-") as tmp:
        work = Path(tmp)
        result["depth"] = depth_growth(depths, work, steps, reps)
        result["seq"] = seq_growth(lengths, work, steps, reps)
        result["clients"] = clients_growth(counts, work, local_steps=2 if quick else 3)
    result["seconds"] = time.perf_counter() - t0
    print(f"[growth] wrote {save_json(result, out.name, out.parent)} and {plot(result, png)} "
          f"({result['seconds']:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    typer.run(main)
