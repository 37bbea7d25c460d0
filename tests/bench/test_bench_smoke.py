"""Smoke test of the benchmark harness: Offsite vs baseline at toy size, and the JSON has its fields."""

from __future__ import annotations

import json

from bench.compare import run
from bench.harness import save_json


def test_compare_quick_writes_every_figure(tiny_checkpoint, tmp_path):
    result = run(quick=True, model=str(tiny_checkpoint), work=tmp_path, repeats=1, step_reps=1, mem_reps=1,
                 variants=("offsite", "offsite-uniform"))  # fmt: skip
    path = save_json(result, "compare.json", tmp_path)
    data = json.loads(path.read_text())
    assert data["machine"]["logical_cpus"] >= 1 and data["machine"]["versions"]["flwr"]
    for v in ("offsite", "offsite-uniform", "baseline"):
        fed = data[v]["federated"]
        assert fed["bytes"]["up_per_client_round"] > 0 and fed["bytes"]["total"] > 0
        assert fed["round_wall_s_mean"] > fed["client_train_s_per_client_round"] > 0
        assert 0 < fed["overhead_fraction_mean"] < 1
        assert 0 <= fed["accuracy"]["plug-in"] <= 100
        assert data[v]["step"]["step_s_median"] > 0 and data[v]["step"]["tokens_per_s_median"] > 0
        mem = data[v]["memory"]
        assert mem["peak_rss_mb"] >= mem["rss_floor_mb"] > 0
    assert data["offsite"]["federated"]["standin"]["method"] == "crash"
    assert data["baseline"]["federated"]["standin"]["method"] == "full"
    assert data["offsite-uniform"]["federated"]["standin"]["method"] == "uniform"
    assert {r["variant"] for r in data["ratios"]} == {"offsite", "offsite-uniform"}
    # The baseline trains LoRA A and B on every block; Offsite sends DARE-dropped B of a few blocks.
    up = {v: data[v]["federated"]["bytes"]["up_per_client_round"] for v in ("offsite", "baseline")}
    assert up["baseline"] > 4 * up["offsite"]
    assert data["offsite"]["memory"]["params_stored"] < data["baseline"]["memory"]["params_stored"]
    figures = {r["figure"] for r in data["ratios"]}
    assert {"upload bytes per client per round", "client step time", "client tokens/s",
            "client peak memory (model + training)", "round wall time"} <= figures  # fmt: skip
    assert {c["figure"].split(",")[0].split(":")[0] for c in data["checks"]} == {
        "framework overhead",
        "final accuracy",
    }


def test_adapter_capacity_trains_each_adapter(tiny_checkpoint, tmp_path):
    from bench.adapter_capacity import run as capacity

    result = capacity(str(tiny_checkpoint), steps=2, lrs=[5e-3], n_test=8, rank=2, work=tmp_path,
                        shape=(1, 1, 2))  # fmt: skip
    assert [r["adapter"] for r in result["rows"]] == [
        "baseline adapter on the full model",
        "Offsite adapter on the full model",
        "Offsite adapter via the CRaSh emulator, plugged in",
    ]
    assert all(0 <= r["accuracy"] <= 100 and r["loss"] > 0 for r in result["rows"])
    assert set(result["best"]) == {r["adapter"] for r in result["rows"]}
    assert result["adapter_blocks"] == [0, 5]  # the 6-block model's first and last
