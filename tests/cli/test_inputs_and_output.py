"""Run-config parsing, the held-out split of a user's file, and how results read."""

import importlib
import io
import json
import time

import pytest
from rich.console import Console

from coordinator.cli import common
from coordinator.cli.common import PlainProgress, interval
from coordinator.cli.experiment import print_results, recovery_line
from coordinator.cli.run import bytes_line, print_summary
from coordinator.runconfig import RunConfigError, check_server_run_config, parse_run_config
from emulator.data import held_out_split, load_task


def test_parse_run_config_reads_what_flower_reads():
    got = parse_run_config(["rounds=5 lora-rank=4", 'run-name="a b"', "lr=1e-3", "resume=true"])
    assert got == {"rounds": 5, "lora-rank": 4, "run-name": "a b", "lr": 0.001, "resume": True}
    assert parse_run_config(None) == {} and parse_run_config([""]) == {}


def test_parse_run_config_reads_a_toml_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('rounds = 2\ntask = "wn-pos"\n')
    assert parse_run_config([str(path)]) == {"rounds": 2, "task": "wn-pos"}
    with pytest.raises(RunConfigError, match="cannot be mixed"):
        parse_run_config([str(path), "rounds=1"])
    with pytest.raises(RunConfigError, match="does not exist"):
        parse_run_config([str(tmp_path / "none.toml")])


def test_server_side_check_names_the_key(caplog):
    from coordinator.config import ConfigError

    with pytest.raises(ConfigError, match="roundz"):
        check_server_run_config({"roundz": 2})
    assert "run config refused" in caplog.text
    assert check_server_run_config({"rounds": 2}).rounds == 2


def _write(path, n):
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "target": f" t{i}"}) + "\n" for i in range(n)))
    return path


def test_a_users_file_is_split_once_seeded_and_disjoint(tmp_path):
    data = _write(tmp_path / "my.jsonl", 50)
    train, test = load_task(str(data), "train"), load_task(str(data), "test")
    assert len(test) == 10 and len(train) == 40
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    assert load_task(str(data), "test") == test  # seeded: the same split every time
    again = held_out_split(train + test)
    assert len(again[1]) == 10


def test_a_test_file_replaces_the_split(tmp_path):
    data, test_file = _write(tmp_path / "my.jsonl", 20), _write(tmp_path / "t.jsonl", 5)
    spec = f"{data}::{test_file}"
    assert len(load_task(spec, "train")) == 20 and len(load_task(spec, "test")) == 5


def test_a_sites_own_file_holds_out_its_test_split(tmp_path):
    from client.local_data import local_examples

    data = _write(tmp_path / "site.jsonl", 30)
    node = {"data-path": str(data)}
    train = local_examples(node, {}, "wn-category", "train", seed=0)
    test = local_examples(node, {}, "wn-category", "test", seed=0)
    assert len(train) == 24 and len(test) == 6 and not {e.prompt for e in train} & {e.prompt for e in test}
    own = local_examples({**node, "eval-data-path": str(data)}, {}, "wn-category", "train", seed=0)
    assert len(own) == 30  # with its own eval file, the whole data-path trains


def test_experiment_prints_the_split(tmp_path, monkeypatch):
    cli = importlib.import_module("coordinator.cli.experiment")

    out = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=out, width=300))
    cli._say_split(str(_write(tmp_path / "my.jsonl", 50)), None)
    assert "testing on a held-out 10 of its 50 records (a random 20%, seed 0), training on the other 40" in (
        out.getvalue()
    )


def test_wilson_interval():
    low, high = interval(50.0, 200)
    assert 43.0 < low < 43.3 and 56.8 < high < 57.0
    assert interval(0.0, 10)[0] == 0.0 and interval(100.0, 10)[1] == 100.0


def _report(down_with, down_without=None, up=None):
    return {
        "five_numbers": {"full zero-shot": 50.0, "emulator zero-shot": 40.0, "emulator FT": 60.0,
                         "plug-in": 62.5, "full FT (centralised)": None},  # fmt: skip
        "bytes": {"down_per_client_with_standin": down_with, "down_per_client_without_standin": down_without,
                  "up_per_client": up, "standin_bytes": 9_600_000},  # fmt: skip
        "timing": {"round_wall_mean_s": 12.0},
        "rounds": [{"clients": [{"status": "ok"}, {"status": "failed"}]}],
    }


def _capture(monkeypatch, module) -> io.StringIO:
    out = io.StringIO()
    monkeypatch.setattr(module, "console", Console(file=out, width=300))
    return out


def test_run_summary_has_units_eval_size_interval_and_footnote(monkeypatch, tmp_path):
    run = importlib.import_module("coordinator.cli.run")

    out = _capture(monkeypatch, run)
    print_summary(_report(13_000_000, 40_000, 20_000), tmp_path / "report.json", 200)
    text = out.getvalue()
    assert "Accuracy % on 200 server-held test examples (95% interval)" in text
    assert "62.5 (55.6–68.9)" in text and "-¹" in text and "¹ not measured" in text
    assert "down 13,000,000 B in the round that sent the stand-in" in text and "up 20,000 B" in text
    assert "1 site update(s) failed" in text


def test_cached_standin_is_said_in_words():
    line = bytes_line(_report(None, 40_000, 20_000))
    assert "was not sent: the sites had it cached" in line and "down 0" not in line
    assert "no upload" in bytes_line(_report(13_000_000))


def _row(ft_adapter, ft_all, recovered=None):
    stat = lambda m: {"mean": m, "std": 0.0, "values": [m]}  # noqa: E731
    return {
        "full zero-shot": stat(50.0), "emulator zero-shot": stat(40.0), "emulator FT": stat(55.0),
        "plug-in": stat(52.0), "full FT (adapter)": stat(ft_adapter), "full FT (all)": stat(ft_all),
        "checks": {"cpl_ratio": 0.8, "plugin_minus_emulator_ft": -3.0, "plugin_minus_full_zero_shot": 2.0,
                   "recovered_share_of_adapter_ft_gain": recovered, "recovered_share_of_all_params_ft_gain": None},
    }  # fmt: skip


def test_no_gain_to_recover_is_said_so():
    line = recovery_line("crash", _row(50.0, 50.0))
    assert "no adapter-FT gain to recover" in line and "recovers 0%" not in line
    assert "recovers 20% of the adapter-FT gain" in recovery_line("crash", _row(60.0, 50.0, 0.2))


def test_one_seed_table_has_no_spread_and_is_not_cut(monkeypatch):
    experiment = importlib.import_module("coordinator.cli.experiment")

    out = io.StringIO()
    monkeypatch.setattr(experiment, "console", Console(file=out, width=common._WIDE))
    print_results({"table": {"crash+distill": _row(60.0, 70.0, 0.2)}, "n_test": 300}, "wn-category", "zoo:base", 1)
    text = out.getvalue()
    assert "±" not in text and "over 1 seeds" not in text and "(one seed)" in text
    assert "crash+distill" in text and "emulator zero-shot" in text and "…" not in text
    assert "accuracy % on 300 test examples" in text


def test_plain_progress_prints_lines_while_nothing_reports():
    out = io.StringIO()
    with PlainProgress(Console(file=out, width=300), every_s=0.2) as bar:
        task = bar.add_task("derive crash", total=1, info="CKA on calibration text")
        time.sleep(0.7)
        bar.update(task, completed=1)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3 and lines[0].startswith("derive crash: 0/1 CKA on calibration text, ")
    assert lines[-1].startswith("derive crash: 1/1")


def test_progress_is_plain_when_not_a_terminal():
    assert isinstance(common.progress(), PlainProgress)  # pytest's stdout is not a terminal


def test_generate_warns_when_a_prompt_exceeds_the_context(monkeypatch):
    control = importlib.import_module("coordinator.cli.control")
    out = _capture(monkeypatch, control)
    tok = lambda text, add_special_tokens=False: {"input_ids": text.split()}  # noqa: E731
    control.warn_long_prompts(tok, ["short one", "w " * 300], 16, 256)
    text = out.getvalue()
    assert text.count("Warning:") == 1 and "is 300 tokens" in text and "context of 256 tokens" in text
