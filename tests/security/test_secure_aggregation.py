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
from coordinator.federation.run import initial_adapter
from coordinator.server_app import make_server_app
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


def _secagg_run(
    checkpoint, tmp_path, rounds: int, local_steps: int, max_examples: int, eval_size: int
) -> dict:
    """Run config of a tiny three-site SecAgg+ run on `checkpoint` (generous timeouts: Ray starts slowly)."""
    return {
        "model": str(checkpoint), "emulator": "uniform", "adapter-first": 1, "adapter-last": 1,
        "keep": 2, "rounds": rounds, "clients-per-round": 3, "min-clients": 2, "local-steps": local_steps, "lr": 1e-3,
        "batch-size": 8, "max-examples": max_examples, "eval-size": eval_size,
        "out-dir": str(tmp_path / "runs"), "run-name": "sa", "node-timeout": 30.0, "round-timeout": 180.0,
        "query-timeout": 20.0, "secagg-shares": 3, "secagg-threshold": 2, "threads": 1,
    }  # fmt: skip


@pytest.mark.slow
def test_secagg_plus_sums_the_survivors_when_a_site_drops(tiny_checkpoint, tmp_path, monkeypatch):
    from flwr.simulation import run_simulation

    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # Ray's workers import tests.security.secagg_apps
    monkeypatch.setenv("OFFSITE_CACHE_DIR", str(tmp_path / "cache"))
    overrides = _secagg_run(tiny_checkpoint, tmp_path, rounds=1, local_steps=2, max_examples=24, eval_size=16)
    from tests.security.secagg_apps import app as client_app

    run_simulation(
        server_app=make_server_app({**overrides, "secure-aggregation": True}),
        client_app=client_app,
        num_supernodes=3,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 2}},
    )
    run_dir = tmp_path / "runs" / "sa"
    report = json.loads((run_dir / "report.json").read_text())
    (rnd,) = report["rounds"]
    sa = rnd["secagg"]
    assert len(sa["sampled"]) == 3 and len(sa["summed"]) == 2 and sa["dropped"] == 1, rnd
    # The same report as a plain run: the five numbers, bytes, and the run store lists the run.
    assert report["mode"] == "secagg+" and report["five_numbers"]["plug-in"] is not None
    assert [c["status"] for c in rnd["clients"]].count("dropped") == 1
    assert (run_dir / "config.json").exists() and (run_dir / "server.log").exists()
    from coordinator.ops.runstore import RunStore, default_store_url

    (listed,) = RunStore(default_store_url(tmp_path / "runs")).list_runs()
    assert listed["status"] == "finished" and listed["run_dir"] == str(run_dir)

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


@pytest.mark.slow
def test_secagg_plus_run_resumes_after_the_coordinator_crashes(tiny_checkpoint, tmp_path, monkeypatch):
    """Round 2 crashes the coordinator; resume=true keeps round 1 (not replayed) and finishes round 2."""
    from flwr.simulation import run_simulation

    from client.client_app import app as client_app
    from coordinator.federation import run as run_module

    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("OFFSITE_CACHE_DIR", str(tmp_path / "cache"))
    overrides = {**_secagg_run(tiny_checkpoint, tmp_path, rounds=2, local_steps=1, max_examples=16, eval_size=8),
                 "client-eval": "none", "secure-aggregation": True}  # fmt: skip
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 2}}
    real_record = run_module.record_round

    def crash_in_round_two(run, entry, *args):
        if entry["round"] == 2:
            raise RuntimeError("coordinator crashed")
        real_record(run, entry, *args)

    monkeypatch.setattr("coordinator.federation.secagg.record_round", crash_in_round_two)
    with pytest.raises(RuntimeError, match="coordinator crashed"):
        run_simulation(server_app=make_server_app(overrides), client_app=client_app, num_supernodes=3,
                       backend_config=backend)  # fmt: skip
    run_dir = tmp_path / "runs" / "sa"
    assert not (run_dir / "report.json").exists()
    first = json.loads((run_dir / "lineage.jsonl").read_text().splitlines()[0])

    monkeypatch.setattr("coordinator.federation.secagg.record_round", real_record)
    run_simulation(server_app=make_server_app({**overrides, "resume": True}), client_app=client_app,
                   num_supernodes=3, backend_config=backend)  # fmt: skip
    report = json.loads((run_dir / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    lines = [json.loads(x) for x in (run_dir / "lineage.jsonl").read_text().splitlines()]
    assert [x["record"]["round"] for x in lines] == [1, 2] and lines[0] == first  # round 1 kept, not replayed


@pytest.mark.slow
def test_dp_with_secagg_plus_noises_the_mean_reports_epsilon_and_stops_at_the_budget(
    tiny_checkpoint, tmp_path, monkeypatch
):
    """Sites clip with Flower's fixedclipping_mod before masking; the coordinator noises the sum."""
    from flwr.simulation import run_simulation
    from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

    from client.client_app import app as client_app
    from coordinator.aggregation.privacy import make_accountant

    monkeypatch.setenv("OFFSITE_CACHE_DIR", str(tmp_path / "cache"))
    z, clip = 1.0, 0.5
    overrides = {**_secagg_run(tiny_checkpoint, tmp_path, rounds=2, local_steps=2, max_examples=24, eval_size=16),
                 "secure-aggregation": True, "dp": "client", "dp-noise-multiplier": z, "dp-clip-norm": clip,
                 "min-clients": 3}  # fmt: skip
    cfg = FederationConfig.from_run_config(overrides)
    accountant, event = make_accountant(cfg), GaussianPrivacyEvent(noise_multiplier=z, sample_size=3, population_size=3)
    accountant.compose(event)
    first = accountant.get_privacy_spent().epsilon
    overrides["dp-max-epsilon"] = first * 1.2  # room for round 1, not round 2
    run_simulation(
        server_app=make_server_app(overrides),
        client_app=client_app,
        num_supernodes=3,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 2}},
    )
    run_dir = tmp_path / "runs" / "sa"
    report = json.loads((run_dir / "report.json").read_text())
    (rnd,) = report["rounds"]  # round 2 would pass the budget: a clean stop after round 1
    assert rnd["updated"] and len(rnd["secagg"]["summed"]) == 3
    assert rnd["privacy"]["releases"] == 1 and abs(rnd["privacy"]["epsilon"] - first) < 1e-9
    assert "dp-max-epsilon" in report["stopped_early"] and report["privacy"]["epsilon"] == rnd["privacy"]["epsilon"]
    full, _ = load_model(str(tiny_checkpoint))
    emu = StandinCache(tmp_path / "cache").load(report["standin"]["hash"])
    start = initial_adapter(cfg, full, emu)
    final = load_file(str(run_dir / "adapter.safetensors"))
    import torch

    moved = torch.cat([(final[k] - start[k]).flatten() for k in start])
    # The clipped mean moves each entry by at most C/3 in L2 over all of them; the noise adds
    # N(0, (z·C/n)²) to every entry, so the spread of the change is the noise's.
    assert abs(float(moved.std()) / (z * clip / 3) - 1) < 0.05, float(moved.std())
