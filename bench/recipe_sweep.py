"""Sweep emulator recipes on one model and task: emulator zero-shot, emulator FT, plug-in, step time.

The full-model references (zero-shot, and FT of the adapter blocks) are computed once and reused
by every recipe; the block CKA matrix is computed once too. Results are written after every job,
and jobs already in the output file are skipped, so a sweep can be stopped and resumed.

    python -m bench.recipe_sweep --model zoo:smollm2 --steps 40 --n-test 150 \\
        --jobs "ref-zs;crash,keep=8,share=none,lr=3e-4;ref-ft,lr=1e-3" --out bench/results/smollm2-sweep.json

A job is `ref-zs`, `ref-ft[,lr=X]`, or
`METHOD[,keep=K][,share=S][,clustering=C][,placement=P][,distill=N][,loss=L][,distill_lr=X][,lr=X]`,
where `distill=N` trains the emulator's middle for N steps (0: one pass) against the full model on
text sampled from the full model itself (`loss`: lm+nmse, nmse or layers; held-out text picks the
checkpoint) before tuning, `prox=MU` adds a proximal term μ/2·‖θ − θ₀‖² to the adapter's tuning, and
`lora=R` tunes LoRA of rank R on the adapter blocks instead of the
whole blocks. Every row carries the gradient cosine (emulator vs full model, before tuning).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from emulator.blocks import get_blocks
from emulator.data import load_task
from emulator.derive import EmulatorOptions, block_similarity, derive_emulator
from emulator.diagnostics import gradient_cosine
from emulator.distill import distill, distill_corpus, text_rows
from emulator.evaluate import accuracy
from emulator.plugin import plug_in_tuned, tunable_adapter
from emulator.reference import trainable_copy
from emulator.train import peak_memory_mb, tune
from emulator.zoo import load_model, public_texts


def parse_job(text: str) -> dict:
    """'crash,keep=8,share=none,lr=3e-4' as a dict with a canonical 'name'."""
    kind, *pairs = [p.strip() for p in text.split(",") if p.strip()]
    job: dict = {"kind": kind}
    for pair in pairs:
        key, _, value = pair.partition("=")
        job[key] = (
            float(value)
            if key in ("lr", "distill_lr", "prox")
            else int(value)
            if key in ("keep", "distill", "lora")
            else value
        )
    job["name"] = ",".join([kind, *pairs])
    return job


class Sweep:
    """The model, data and cached references of one sweep; each job adds one row."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.full, self.tok = load_model(args.model)
        self.train = load_task(args.task, "train")
        self.test = load_task(args.task, "test")[: args.n_test]
        self.calib = text_rows(self.tok, public_texts(args.calibration_texts))
        n = len(get_blocks(self.full))
        self.adapter = list(range(args.first)) + list(range(n - args.last, n))
        self._sim: torch.Tensor | None = None
        self._distill_rows = None
        self.zero_shot: dict[str, float] = {}  # emulator zero-shot per layout, shared across lrs

    @property
    def distill_rows(self):
        """(train, held-out) rows of text sampled from the full model, made on first use."""
        if self._distill_rows is None:
            self._distill_rows = distill_corpus(self.full, self.tok, "self", self.args.distill_texts,
                                                seed=self.args.seed)  # fmt: skip
        return self._distill_rows

    @property
    def sim(self) -> torch.Tensor:
        """The block CKA matrix, computed on first use."""
        cache = self.args.similarity
        if self._sim is None and cache is not None and cache.exists():
            self._sim = torch.load(cache)
        if self._sim is None:
            self._sim = block_similarity(self.full, self.calib)
            if cache is not None:
                torch.save(self._sim, cache)
        return self._sim

    def score(self, model) -> float:
        """Accuracy (%) on the test slice."""
        return accuracy(model, self.tok, self.test)

    def fit(self, model, params, lr: float, proximal: float = 0.0) -> dict:
        """Tune for the sweep's steps; return loss and per-step seconds."""
        stats = tune(model, self.tok, self.train, params, steps=self.args.steps, lr=lr,
                     batch_size=self.args.batch_size, seed=self.args.seed, proximal=proximal)  # fmt: skip
        return {"train_loss": stats.loss, "step_seconds": stats.seconds / stats.steps}

    def run(self, job: dict) -> dict:
        """One job's row."""
        lr = job.get("lr", self.args.lr)
        if job["kind"] == "ref-zs":
            return {"full zero-shot": self.score(self.full)}
        if job["kind"] == "ref-ft":
            ref, params = trainable_copy(self.full, self.adapter)
            row = self.fit(ref, params, lr)
            return row | {"full FT (adapter)": self.score(ref), "lr": lr}
        options = EmulatorOptions(
            job["kind"], self.args.first, self.args.last, job.get("keep", self.args.keep),
            clustering=job.get("clustering", "balanced"), share=job.get("share", "full"),
            placement=job.get("placement", "edges"),
        )  # fmt: skip
        # tuned and distilled in place: a copy, so nothing shared with the full model moves
        emu = copy.deepcopy(derive_emulator(self.full, options, tokenizer=self.tok, similarity=self.sim))
        extra = {}
        if "distill" in job:
            stats = distill(emu, self.full, *self.distill_rows[0], steps=job["distill"] or None,
                            seed=self.args.seed, loss=job.get("loss", "lm+nmse"), lr=job.get("distill_lr", 1e-4),
                            heldout=self.distill_rows[1])  # fmt: skip
            extra = {"distill_steps": job["distill"]} | {f"distill_{k}": v for k, v in stats.items()}
        key = json.dumps([emu.manifest.layout, *(job.get(k) for k in ("distill", "loss", "distill_lr"))])
        if key not in self.zero_shot:
            self.zero_shot[key] = self.score(emu.model)
        row = {"layout": emu.manifest.layout, "clusters": emu.manifest.clusters, "lr": lr,
               "adapter_blocks": emu.manifest.adapter_blocks,
               "depth": len(emu.manifest.layout), "stored_blocks": len(emu.manifest.stored_blocks),
               "emulator zero-shot": self.zero_shot[key]} | extra  # fmt: skip
        row["gradient cosine"] = gradient_cosine(self.full, emu, self.tok, self.train, self.args.batch_size,
                                                 self.args.seed)  # fmt: skip
        rank = job.get("lora", 0)
        model, params = tunable_adapter(emu, rank)
        row |= self.fit(model, params, lr, job.get("prox", 0.0))
        row["emulator FT"] = self.score(model)
        row["plug-in"] = self.score(plug_in_tuned(self.full, emu, model, rank))
        return row


def main(argv: list[str] | None = None) -> None:
    """Run the jobs not yet in --out, writing the file after each."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="zoo:smollm2")
    p.add_argument("--task", default="wn-category")
    p.add_argument("--jobs", required=True, help="';'-separated jobs (see the module docstring)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--n-test", type=int, default=150)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--first", type=int, default=2)
    p.add_argument("--last", type=int, default=2)
    p.add_argument("--keep", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--distill-texts", type=int, default=512, help="texts sampled from the model for distill=N rows"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calibration-texts", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--similarity", type=Path, help="cache file of the block CKA matrix (read, or written once)"
    )
    p.add_argument("--out", type=Path, default=Path("bench/results/smollm2-sweep.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = {k: v for k, v in vars(args).items() if k not in ("jobs", "out", "threads", "similarity")}
    report = json.loads(args.out.read_text()) if args.out.exists() else {"settings": settings, "rows": {}}
    # Files written before --distill-texts existed sampled the default count.
    if {"distill_texts": 512} | report["settings"] != settings:
        raise SystemExit(f"{args.out} was written with other settings: {report['settings']}")
    sweep = Sweep(args)
    for job in map(parse_job, args.jobs.split(";")):
        if job["name"] in report["rows"]:
            continue
        start = time.perf_counter()
        row = sweep.run(job) | {"seconds": time.perf_counter() - start, "peak_mem_mb": peak_memory_mb()}
        report["rows"][job["name"]] = row
        report["torch"], report["threads"] = torch.__version__, torch.get_num_threads()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        shown = {k: v for k, v in row.items() if k not in ("layout", "clusters")}
        print(job["name"], json.dumps(shown), flush=True)


if __name__ == "__main__":
    main()
