"""`offsite port` and `offsite generate --control/--proxy` end to end on tiny models."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from coordinator.cli import app
from emulator.control.model import control_config, new_control_model, save_control
from emulator.zoo import load_model


def test_port_then_generate_with_the_ported_control(tmp_path):
    template, tok = load_model("zoo:small")
    control = new_control_model(control_config(template.config, tok, 1, 16), template=template)
    save_control(control, tok, tmp_path / "ctrl")
    runner = CliRunner()
    res = runner.invoke(
        app,
        ["port", "--control", str(tmp_path / "ctrl"), "--target", "zoo:other", "--out", str(tmp_path / "p")],
    )
    assert res.exit_code == 0, res.output
    stats = json.loads((tmp_path / "p" / "port.json").read_text())["stats"]
    assert stats["target_vocab"] == 3072 and stats["unmapped"] == 0
    args = [
        "generate",
        "--model",
        "zoo:other",
        "--control",
        str(tmp_path / "p"),
        "--prompt",
        "cat:",
        "--max-new-tokens",
        "3",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "cat:" in res.output, res.output


def test_cli_errors_are_clear(tmp_path):
    runner = CliRunner()
    res = runner.invoke(
        app, ["port", "--control", str(tmp_path), "--target", "zoo:other", "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and "neither a" in " ".join(res.output.split())
    res = runner.invoke(app, ["generate", "--model", "zoo:other", "--proxy", str(tmp_path), "--prompt", "x"])
    assert res.exit_code == 2 and "offsite port" in " ".join(res.output.split())
