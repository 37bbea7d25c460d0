import json

import pytest

from emulator.data import DataError, load_examples, load_task, partition


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


MC = {"prompt": "x:", "choices": [" a", " b", " c"], "answer": 1}


def test_embedded_tasks_load_with_both_kinds():
    cat = load_task("wn-category", "test")
    pos = load_task("wn-pos", "test")
    assert cat[0].kind == "mc" and len(cat[0].choices) == 4 and len(cat) >= 400
    assert pos[0].kind == "gen" and {e.target.strip() for e in pos} == {"noun", "verb", "adjective", "adverb"}
    assert len({e.label for e in cat}) == 8


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [MC, MC, '{"prompt": "broken", ', MC])
    with pytest.raises(DataError, match=r"d\.jsonl:3: not valid JSON"):
        load_examples(path)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"prompt": "", "target": "x"}, "prompt"),
        ({"prompt": "p", "choices": [" a", " b"], "answer": 5}, "out of range"),
        ({"prompt": "p", "choices": [" a"], "answer": 0}, "at least 2"),
        ({"prompt": "p"}, "either 'choices'"),
        (["not", "an", "object"], "expected an object"),
    ],
)
def test_invalid_records_are_rejected_with_location(tmp_path, bad, message):
    path = _write_jsonl(tmp_path / "d.jsonl", [MC, bad])
    with pytest.raises(DataError, match=rf"d\.jsonl:2: .*{message}"):
        load_examples(path)


def test_csv_and_parquet_load_through_the_same_path(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv_path = tmp_path / "d.csv"
    csv_path.write_text('prompt,choices,answer\n"q1:","["" a"", "" b""]",0\n"q2:","["" a"", "" b""]",1\n')
    rows = load_examples(csv_path)
    assert [r.answer for r in rows] == [0, 1] and rows[0].choices == (" a", " b")
    bad = tmp_path / "bad.csv"
    bad.write_text('prompt,choices,answer\n"q1:","["" a"", "" b""]",0\n"q2:","[broken",1\n')
    with pytest.raises(DataError, match=r"bad\.csv:3: 'choices' is not a JSON list"):
        load_examples(bad)
    pq_path = tmp_path / "d.parquet"
    pq.write_table(
        pa.Table.from_pylist([{"prompt": "p1", "target": " yes"}, {"prompt": "p2", "target": " no"}]), pq_path
    )
    assert [r.target for r in load_examples(pq_path)] == [" yes", " no"]
    with pytest.raises(DataError, match="unsupported data format"):
        load_examples(tmp_path / "d.txt") if (tmp_path / "d.txt").write_text("x") else None


def test_missing_file_and_unknown_task():
    with pytest.raises(DataError, match="no such data file"):
        load_examples("/nonexistent/file.jsonl")
    with pytest.raises(DataError, match="unknown task"):
        load_task("no-such-task", "train")


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological"])
def test_partitions_are_disjoint_and_cover_the_data(scheme):
    examples = load_task("wn-category", "train")[:800]
    parts = partition(examples, 8, scheme=scheme, alpha=0.3, classes_per_partition=2, seed=0)
    assert len(parts) == 8 and all(parts)
    ids = [id(e) for p in parts for e in p]
    assert len(ids) == len(set(ids))
    if scheme == "pathological":
        assert all(len({e.label for e in p}) <= 2 for p in parts)
    else:
        assert len(ids) == len(examples)
    if scheme == "dirichlet":
        # Non-IID: label mixes differ strongly between clients.
        top_share = [
            max(sum(e.label == lab for e in p) for lab in {e.label for e in p}) / len(p) for p in parts
        ]
        assert max(top_share) > 0.35
