"""Find the embedded zoo's weights and public text when the code runs from a Flower FAB.

A FAB carries code only (`*.py`, `*.json`, `*.jsonl`, ... under 10 MB): when Flower runs the
ServerApp from an installed FAB, `emulator/zoo/models/*/model.safetensors` and
`emulator/zoo/tasks/public.txt` are not next to the imported `emulator` package. They are looked
up, in order, in `$OFFSITE_ZOO_DIR`, next to the imported package, and in the installed `offsite`
distribution (its source tree for an editable install).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from emulator.zoo.specs import ZOO_DIR


def _installed_zoo_dir() -> Path | None:
    try:
        dist = importlib.metadata.distribution("offsite")
    except importlib.metadata.PackageNotFoundError:
        return None
    direct = dist.read_text("direct_url.json")
    if direct:
        info = json.loads(direct)
        if info.get("dir_info", {}).get("editable") and info.get("url", "").startswith("file://"):
            return Path(unquote(urlparse(info["url"]).path)) / "emulator" / "zoo"
    return Path(str(dist.locate_file("emulator/zoo")))


def zoo_dirs() -> list[Path]:
    """Candidate zoo directories, most specific first."""
    out = []
    if env := os.environ.get("OFFSITE_ZOO_DIR"):
        out.append(Path(env).expanduser())
    out.append(ZOO_DIR)
    installed = _installed_zoo_dir()
    if installed is not None:
        out.append(installed)
    return list(dict.fromkeys(out))


def zoo_model_dir(name: str) -> Path:
    """The directory holding zoo model `name`'s config and weights, searched in `zoo_dirs()`."""
    for root in zoo_dirs():
        path = root / "models" / name
        if (path / "config.json").exists() and any(path.glob("*.safetensors")):
            return path
    raise FileNotFoundError(
        f"zoo model {name!r} has no weights in {', '.join(map(str, zoo_dirs()))}; "
        "run 'offsite zoo build' or set OFFSITE_ZOO_DIR"
    )


def public_texts(limit: int | None = None) -> list[str]:
    """Public (non-private) English text for calibration and distillation, found outside a FAB too."""
    for root in zoo_dirs():
        path = root / "tasks" / "public.txt"
        if path.exists():
            lines = [t for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
            return lines[:limit] if limit else lines
    raise FileNotFoundError(f"no tasks/public.txt in {', '.join(map(str, zoo_dirs()))}")
