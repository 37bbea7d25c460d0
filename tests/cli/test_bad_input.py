"""Every bad input gets a one-line message naming it and exit status 2, before any model loads."""

import subprocess
import sys

import click
import pytest
import typer.main
from typer.testing import CliRunner

from coordinator.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.mark.parametrize(
    ("tokens", "named"),
    [
        (["rounds"], "'rounds'"),
        (["rounds = 2"], "'rounds'"),
        (["rounds", "=", "2"], "'rounds'"),
        (["rounds=1 local-steps"], "'local-steps'"),
        (["rounds=1", "local-steps"], "'local-steps'"),
        (["lr=abc"], "'lr=abc'"),
        (["rounds="], "'rounds='"),
        (["=2"], "'=2'"),
    ],
)
def test_run_refuses_tokens_that_are_not_key_value(tokens, named):
    args = ["run"]
    for token in tokens:
        args += ["-c", token]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "Error: run-config token" in result.output and named in result.output
    assert "Simulating" not in result.output


def test_run_refuses_unknown_keys_bad_types_and_missing_inputs(tmp_path):
    unknown = invoke("run", "-c", "roundz=2")
    assert unknown.exit_code == 2 and "unknown run-config key(s): roundz" in unknown.output
    typed = invoke("run", "-c", 'rounds="two"')
    assert typed.exit_code == 2 and "rounds" in typed.output
    task = invoke("run", "-c", 'task="nope"')
    assert task.exit_code == 2 and "unknown task 'nope'" in task.output
    data = invoke("run", "-c", f'task="{tmp_path / "missing.jsonl"}"')
    assert data.exit_code == 2 and "does not exist" in data.output
    app_dir = invoke("run", "--app", str(tmp_path))
    assert app_dir.exit_code == 2 and "has no pyproject.toml" in app_dir.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--supernodes", "0"], "Invalid value for '--supernodes': 0 is not in the range x>=1"),
        (["run", "--client-cpus", "0"], "'--client-cpus': 0 is not in the range x>=1"),
        (["experiment", "--seeds", "0"], "'--seeds': 0 is not in the range x>=1"),
        (["experiment", "--steps", "0"], "'--steps': 0 is not in the range x>=1"),
        (["experiment", "--n-test", "0"], "'--n-test': 0 is not in the range x>=1"),
        (["experiment", "--keep", "0"], "'--keep': 0 is not in the range x>=1"),
        (["derive", "--out", "x", "--keep", "-1"], "'--keep': -1 is not in the range x>=0"),
        (["experiment", "--distill-loss", "kl"], "--distill-loss: unknown loss 'kl'; choose one of lm+nmse"),
        (["experiment", "--distill-text", "/no/such.txt"], "--distill-text: /no/such.txt is neither 'self'"),
        (["generate", "--prompt", "a", "--top-p", "2"], "'--top-p': 2.0 is not in the range 0.0<=x<=1.0"),
        (["generate", "--prompt", "a", "--max-new-tokens", "0"], "'--max-new-tokens': 0 is not in the range"),
        (["generate", "--prompt", "a", "--top-p", "0"], "--top-p must be > 0"),
        (["generate", "--prompt", "a", "--model", "zoo:huge"], "'zoo:huge' is not a zoo model"),
        (
            ["generate", "--prompt", "a", "--control", "/nowhere"],
            "--control: ported control directory /nowhere",
        ),
        (["generate", "--prompt", "a", "--proxy", "/nowhere"], "--proxy: expert directory /nowhere"),
        (["merge", "m.yaml", "--out", "o", "--eval-size", "-1"], "'--eval-size': -1 is not in the range"),
    ],
)
def test_ranges_live_in_the_option_definitions(args, message):
    result = invoke(*args)
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--variants", "bogus"],
            "unknown variant 'bogus'; choose from uniform, uniform+distill, crash, "
            "crash+distill, full, full+distill",
        ),  # fmt: skip
        (["--variants", "crash+x"], "unknown variant 'crash+x'"),
        (["--variants", ","], "--variants is empty"),
        (["--variants", "crash,crash"], "lists a variant twice"),
        (["--task", "nope"], "unknown task 'nope'; tasks are wn-category, wn-pos, arc-easy"),
        (["--task", "/nowhere/my.jsonl"], "data file /nowhere/my.jsonl does not exist"),
        (
            ["--model", "zoo:huge"],
            "'zoo:huge' is not a zoo model; the zoo has base, other, small, smollm2, smollm2-small",
        ),
        (["--model", "/nowhere/m.gguf"], "GGUF file /nowhere/m.gguf does not exist"),
        (["--model", "/nowhere/ckpt"], "neither a zoo model"),
        (["--test-file", "t.jsonl"], "--test-file goes with a --task data file"),
        (["--first", "0", "--last", "0"], "needs at least one adapter block"),
    ],
)
def test_experiment_checks_before_any_model_loads(args, message):
    result = invoke("experiment", *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert "full zero-shot" not in result.output


def test_experiment_test_file_must_exist(tmp_path):
    train = tmp_path / "my.jsonl"
    train.write_text('{"prompt": "a", "target": " b"}\n')
    result = invoke("experiment", "--task", str(train), "--test-file", str(tmp_path / "t.jsonl"))
    assert result.exit_code == 2 and "--test-file: data file" in result.output


def test_experiment_one_record_cannot_be_split(tmp_path):
    train = tmp_path / "my.jsonl"
    train.write_text('{"prompt": "a", "target": " b"}\n')
    result = invoke("experiment", "--task", str(train), "--model", "zoo:base")
    assert result.exit_code == 2 and "cannot be split into train and test" in result.output


def test_merge_config_must_exist(tmp_path):
    result = invoke("merge", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "merge config" in result.output and "does not exist" in result.output


def test_derive_names_its_methods():
    result = invoke("derive", "--out", "x", "--method", "bogus")
    assert result.exit_code == 2
    assert "unknown method 'bogus'; choose one of uniform, crash, full" in result.output
    placement = invoke("derive", "--out", "x", "--placement", "middle")
    assert placement.exit_code == 2 and "choose edges or spread" in placement.output
    method = next(p for p in typer.main.get_command(app).commands["derive"].params if p.name == "method")
    assert "full (no compression)" in method.help


def test_cli_copies_match_the_emulator():
    from coordinator.cli.checks import (
        DISTILL_LOSSES,
        EMULATOR_METHODS,
        TEST_FILE_SEP,
        embedded_tasks,
        zoo_models,
    )
    from emulator.data import TEST_FILE_SEP as DATA_SEP
    from emulator.data import task_names
    from emulator.derive import METHODS
    from emulator.distill import LOSSES
    from emulator.zoo.specs import MODELS, PRETRAINED

    assert EMULATOR_METHODS == METHODS and TEST_FILE_SEP == DATA_SEP and DISTILL_LOSSES == LOSSES
    assert embedded_tasks() == task_names() and zoo_models() == sorted([*MODELS, *PRETRAINED])


def test_run_checks_both_files_of_a_train_test_task(tmp_path):
    train = tmp_path / "my.jsonl"
    train.write_text('{"prompt": "a", "target": " b"}\n')
    result = invoke("run", "-c", f'task="{train}::{tmp_path / "t.jsonl"}"')
    assert result.exit_code == 2 and "t.jsonl does not exist" in result.output


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.startswith("offsite ")


def _params(command: click.Command, path: str = ""):
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _params(sub, f"{path} {name}")
        return
    for param in command.params:
        yield path.strip(), command, param


def test_every_option_and_argument_has_help():
    for path, _command, param in _params(typer.main.get_command(app)):
        assert param.help, (path, param.name)
    merge = invoke("merge", "--help").output
    assert "YAML merge config" in merge


def test_help_texts_keep_their_bracketed_words():
    # Rich reads "[default: ...]" in a help text as markup and drops it; help texts use parentheses.
    for path, _command, param in _params(typer.main.get_command(app)):
        assert "[" not in (param.help or ""), (path, param.name, param.help)
    assert "third" in invoke("experiment", "--help").output  # --keep's default, once dropped


def test_no_locals_in_tracebacks():
    assert app.pretty_exceptions_show_locals is False


def test_bad_option_fails_without_loading_torch():
    code = (
        "import sys\n"
        "from coordinator.cli import app\n"
        "for args in (['experiment', '--variants', 'bogus'], ['run', '-c', 'rounds'],\n"
        "             ['experiment', '--task', 'nope'], ['derive', '--out', 'x', '--method', 'x']):\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 2, exc.code\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_piped_errors_are_not_wrapped(tmp_path):
    long = "x" * 120
    out = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "experiment", "--task", f"{long}.jsonl"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if "does not exist" in line]
    assert len(lines) == 1 and long in lines[0]
    usage = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "run", "--supernodes", "0"], capture_output=True, text=True
    )
    assert usage.returncode == 2
    assert "Error: Invalid value for '--supernodes': 0 is not in the range x>=1." in usage.stderr


def test_run_samples_every_site_by_default_and_refuses_more(monkeypatch, tmp_path):
    import importlib

    simulation = importlib.import_module("coordinator.cli.simulation")
    seen = {}

    def fake(where, overrides, n, client_cpus=1):
        seen.update(overrides, n=n)
        raise RuntimeError("the ServerApp stopped: boom")

    monkeypatch.setattr(simulation, "simulate", fake)
    result = invoke("run", "--supernodes", "3", "-c", f'out-dir="{tmp_path}"')
    assert seen["clients-per-round"] == 3 and seen["n"] == 3
    # A failing ServerApp reaches the terminal and the exit status.
    assert (
        result.exit_code == 1 and "the run failed: RuntimeError: the ServerApp stopped: boom" in result.output
    )
    more = invoke("run", "--supernodes", "2", "-c", "clients-per-round=8")
    assert more.exit_code == 2 and "clients-per-round 8 is more than the 2 simulated sites" in more.output


def test_every_model_option_names_the_forms_that_load():
    """zoo names, Hugging Face directories and GGUF files all load; every --model/--target help says so."""
    group = typer.main.get_command(app)
    seen = 0

    def walk(cmd):
        nonlocal seen
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)
        for param in getattr(cmd, "params", []):
            if param.name in ("model", "target") and isinstance(param, click.Option):
                seen += 1
                assert all(form in param.help for form in ("zoo:", "checkpoint directory", ".gguf")), cmd.name

    walk(group)
    assert seen >= 4
