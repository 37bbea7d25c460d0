"""SecAgg+ through Flower's simulation engine: one site drops mid-round, the sum of the others survives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from client.cache import StandinCache
from client.local_data import local_examples
from client.trainer import train_adapter
from coordinator.config import FederationConfig
from coordinator.federation.loop import initial_adapter
from coordinator.federation.secagg import make_secagg_server_app
from emulator.zoo import load_model
from protocols.seeds import site_seed as derive_seed

ROOT = Path(__file__).parents[2]


def _plain_delta(cfg: FederationConfig, cache: Path, digest: str, adapter: dict, pid: int, n: int):
    """What site `pid` trained in round 1, recomputed in the clear (same stand-in, data and seed)."""
    emu = StandinCache(cache).load(digest)
    if emu.tokenizer.pad_token_id is None:
        emu.tokenizer.pad_token = emu.tokenizer.eos_token
    node = {"partition-id": pid, "num-partitions": n}
    examples = local_examples(node, {}, cfg.task, "train", cfg.seed, cfg.max_examples)
    update = train_adapter(emu, adapter, examples, lora_rank=0, train_lora_a=False, steps=cfg.local_steps,
                           lr=cfg.lr, batch_size=cfg.batch_size, seed=derive_seed(cfg.seed, 1, pid))  # fmt: skip
    return update.delta, len(examples)


@pytest.mark.slow
def test_secagg_plus_sums_the_survivors_when_a_site_drops(tiny_checkpoint, tmp_path, monkeypatch):
    from flwr.simulation import run_simulation

    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # Ray's workers import tests.security.secagg_apps
    monkeypatch.setenv("OFFSITE_CACHE_DIR", str(tmp_path / "cache"))
    overrides = {
        "model": str(tiny_checkpoint), "emulator": "uniform", "adapter-first": 1, "adapter-last": 1,
        "keep": 2, "rounds": 1, "clients-per-round": 3, "min-clients": 2, "local-steps": 2,
        "batch-size": 8, "max-examples": 24, "eval-size": 16, "out-dir": str(tmp_path / "runs"),
        "run-name": "sa", "node-timeout": 30.0, "round-timeout": 60.0, "query-timeout": 20.0,
        "secagg-shares": 3, "secagg-threshold": 2, "threads": 1,
    }  # fmt: skip
    from tests.security.secagg_apps import app as client_app

    run_simulation(
        server_app=make_secagg_server_app(overrides),
        client_app=client_app,
        num_supernodes=3,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 2}},
    )
    run_dir = tmp_path / "runs" / "sa"
    report = json.loads((run_dir / "report.json").read_text())
    (rnd,) = report["rounds"]
    assert len(rnd["sampled"]) == 3 and len(rnd["summed"]) == 2 and rnd["dropped"] == 1, rnd

    cfg = FederationConfig.from_run_config(overrides)
    full, tok = load_model(str(tiny_checkpoint))
    emu = StandinCache(tmp_path / "cache").load(report["standin"]["hash"])
    start = initial_adapter(cfg, full, emu)
    final = load_file(str(run_dir / "adapter.safetensors"))
    secure = {k: final[k] - start[k] for k in start}
    plain = [
        _plain_delta(cfg, tmp_path / "cache", report["standin"]["hash"], start, pid, 3) for pid in range(3)
    ]
    survivors = [p for pid, p in enumerate(plain) if pid != 2]
    total = sum(n for _, n in survivors)
    expected = {k: sum(d[k] * n for d, n in survivors) / total for k in start}
    err = max(float((secure[k] - expected[k]).abs().max()) for k in start)
    scale = max(float(expected[k].abs().max()) for k in start)
    print(f"SecAgg+ mean vs plain mean of the 2 survivors: max abs error {err:.3g} (max |mean| {scale:.3g})")
    assert err < 1e-4 < scale  # quantisation error only (clipping range 8, 2^22 levels)
    # The dropped site's delta is not in the sum.
    everyone = {k: sum(d[k] * n for d, n in plain) / sum(n for _, n in plain) for k in start}
    assert max(float((secure[k] - everyone[k]).abs().max()) for k in start) > 10 * err
