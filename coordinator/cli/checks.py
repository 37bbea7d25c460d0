"""Checks of models, tasks and files that run before torch loads, so bad input fails in a second."""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path

from coordinator.cli.common import fail

# emulator.derive.METHODS, copied so a bad method fails before torch loads (tests/cli checks they agree).
EMULATOR_METHODS = ("uniform", "crash", "full")
DISTILL_LOSSES = ("lm+nmse", "nmse", "layers")  # emulator.distill.LOSSES, copied likewise
# The forms a --model/--target takes; every such help text says them.
MODEL_FORMS = "zoo:NAME (offsite zoo info), a local Hugging Face checkpoint directory, or a .gguf file"
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
TEST_FILE_SEP = "::"  # emulator.data.TEST_FILE_SEP: 'train.jsonl::test.jsonl'


def _zoo_dir() -> Path:
    # find_spec, not an import: importing emulator.zoo loads torch (seconds).
    spec = importlib.util.find_spec("emulator")
    return Path(next(iter(spec.submodule_search_locations))) / "zoo"


def embedded_tasks() -> list[str]:
    """Names of the embedded tasks (their train files in the package), then the benchmark tasks."""
    from emulator.benchmarks.specs import BENCHMARKS

    files = sorted(p.name.removesuffix(".train.jsonl") for p in (_zoo_dir() / "tasks").glob("*.train.jsonl"))
    return [*files, *BENCHMARKS]


def check_benchmark_data(task: str, option: str = "--task") -> None:
    """Refuse a benchmark task whose wheel is absent while OFFSITE_NO_FETCH forbids installing it."""
    from emulator.benchmarks.specs import MODULE, install_hint, is_benchmark

    no_fetch = os.environ.get("OFFSITE_NO_FETCH", "").lower() in ("1", "true", "yes")
    if is_benchmark(task) and no_fetch and importlib.util.find_spec(MODULE) is None:
        fail(
            f"{option}: {task} needs the benchmark data wheel, which is not installed; run: {install_hint()}"
        )


@functools.cache
def _specs():
    # emulator/zoo/specs.py loaded on its own: importing it as emulator.zoo.specs runs the package's
    # __init__, which loads torch.
    spec = importlib.util.spec_from_file_location("_offsite_zoo_specs", _zoo_dir() / "specs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def zoo_models() -> list[str]:
    """Names of the zoo's models: the embedded ones and the pretrained ones fetched from PyPI wheels."""
    specs = _specs()
    return sorted([*specs.MODELS, *getattr(specs, "PRETRAINED", {})])


def is_data_file(task: str) -> bool:
    """Whether `task` names a data file (by its suffix) rather than an embedded task."""
    return Path(task).suffix.lower() in DATA_SUFFIXES


def check_task(task: str, option: str = "--task") -> None:
    """Refuse an unknown embedded task or a data file that does not exist ('train::test' checks both)."""
    train, sep, test = task.partition(TEST_FILE_SEP)
    if sep:
        for path in (train, test):
            if not is_data_file(path):
                fail(f"{option}: {task!r}: both sides of '{TEST_FILE_SEP}' must be data files")
            check_task(path, option)
        return
    if is_data_file(task):
        if not Path(task).expanduser().is_file():
            fail(f"{option}: data file {task} does not exist")
    elif task not in embedded_tasks():
        fail(
            f"{option}: unknown task {task!r}; tasks are {', '.join(embedded_tasks())}, "
            f"or give a {'/'.join(DATA_SUFFIXES)} file"
        )
    check_benchmark_data(task, option)


def check_model(model: str, option: str = "--model") -> None:
    """Refuse a model that is neither a zoo model nor a checkpoint directory with a config.json."""
    name = model.removeprefix("zoo:")
    if name in zoo_models():
        return
    if model.lower().endswith(".gguf"):
        if not Path(model).expanduser().is_file():
            fail(f"{option}: GGUF file {model} does not exist")
        return
    if model.startswith("zoo:"):
        fail(f"{option}: {model!r} is not a zoo model; the zoo has {', '.join(zoo_models())}")
    if not (Path(model).expanduser() / "config.json").is_file():
        fail(
            f"{option}: {model!r} is neither a zoo model (zoo:{', zoo:'.join(zoo_models())}) nor a local "
            "checkpoint directory with a config.json, nor a .gguf file"
        )


def check_dir(path: Path, option: str, what: str = "directory") -> None:
    """Refuse a path that is not an existing directory."""
    if not path.expanduser().is_dir():
        fail(f"{option}: {what} {path} does not exist")
