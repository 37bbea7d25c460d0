"""`pip install` the built wheel into a fresh venv and run `offsite run` from a directory with no project."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_offsite_run_from_an_installed_wheel_outside_the_repository(tmp_path):
    # A copy of the tree, so building leaves no build/ behind in the checkout.
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()  # fmt: skip
    for name in files:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((ROOT / name).read_bytes())
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                    "-w", str(dist)], check=True)  # fmt: skip
    venv = tmp_path / "venv"
    # System site-packages: torch, flwr & co. are reused; only offsite comes from the wheel.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    subprocess.run([venv / "bin" / "pip", "install", "-q", "--no-deps", *dist.glob("*.whl")], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    where = subprocess.run([venv / "bin" / "python", "-c", "import coordinator; print(coordinator.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)  # fmt: skip
    assert str(venv) in where.stdout
    overrides = (f'rounds=1 local-steps=1 eval-size=8 calibration-texts=8 clients-per-round=1 '
                 f'client-eval="none" out-dir="{elsewhere / "runs"}" run-name="wheel"')  # fmt: skip
    run = subprocess.run([venv / "bin" / "offsite", "run", "--supernodes", "1", "-c", overrides],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    assert "has no pyproject.toml" not in out and "Accuracy % on 8 server-held test examples" in out
    assert json.loads((elsewhere / "runs" / "wheel" / "report.json").read_text())["five_numbers"]
    assert "FutureWarning" not in out and "Manually terminating" not in out
    assert "signatures are not" not in out and "no coordinator key" not in out  # sites verified signatures
