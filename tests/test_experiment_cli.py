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
