"""The recipe sweep on zoo:base at toy size: rows for references and a distilled, spread emulator; resume."""

from __future__ import annotations

import json

import pytest

from bench.recipe_sweep import main, parse_job
from tests.conftest import single_thread


@pytest.fixture(autouse=True)
def _one_thread():
    yield from single_thread()


def test_parse_job_reads_numbers_and_keeps_a_canonical_name():
    job = parse_job("crash, keep=8, share=none, distill=50, lr=3e-4")
    assert job == {"kind": "crash", "keep": 8, "share": "none", "distill": 50, "lr": 3e-4,
                   "name": "crash,keep=8,share=none,distill=50,lr=3e-4"}  # fmt: skip


def test_sweep_writes_each_row_and_skips_rows_it_has(tmp_path, capsys):
    out = tmp_path / "sweep.json"
    args = ["--model", "zoo:base", "--steps", "1", "--n-test", "4", "--batch-size", "4",
            "--calibration-texts", "16", "--distill-texts", "24", "--keep", "3", "--out", str(out)]  # fmt: skip
    main(
        [*args, "--jobs", "ref-zs;crash,share=none,placement=spread,distill=2,lr=1e-3;uniform,lora=4,lr=5e-3"]
    )
    rows = json.loads(out.read_text())["rows"]
    assert 0 <= rows["ref-zs"]["full zero-shot"] <= 100
    emu = rows["crash,share=none,placement=spread,distill=2,lr=1e-3"]
    assert emu["distill_steps"] == 2 and emu["distill_nmse_start"] > 0
    assert emu["depth"] == len(emu["layout"]) == 2 + 3 + 2  # no sharing: each kept block once
    assert len(emu["adapter_blocks"]) == 4 and emu["adapter_blocks"] != [0, 1, 10, 11]  # spread, not edges
    for key in ("emulator zero-shot", "emulator FT", "plug-in"):
        assert 0 <= emu[key] <= 100
    lora = rows["uniform,lora=4,lr=5e-3"]
    assert lora["adapter_blocks"] == [0, 1, 10, 11] and 0 <= lora["plug-in"] <= 100
    capsys.readouterr()
    main([*args, "--jobs", "ref-zs"])  # already there: nothing is run again
    assert capsys.readouterr().out == ""
    with pytest.raises(SystemExit, match="other settings"):
        main([*args[:-4], "--keep", "4", "--out", str(out), "--jobs", "ref-zs"])
