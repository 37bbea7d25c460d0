"""Per-round checkpoints of a run: round, global adapter, history, server optimiser state.

Written atomically (temporary file, then rename) as run_dir/checkpoints/round-NNNN.pt, so a crash
mid-write leaves the previous checkpoint intact; the two newest are kept.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

_NAME = re.compile(r"^round-(\d{4,})\.pt$")
KEEP = 2


def checkpoint_dir(run_dir: Path) -> Path:
    """Where a run's checkpoints live."""
    return run_dir / "checkpoints"


def save_checkpoint(run_dir: Path, state: dict) -> Path:
    """Write `state` (must hold 'round'; tensors and plain Python values only) and prune old ones."""
    directory = checkpoint_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"round-{int(state['round']):04d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    for old in list_checkpoints(run_dir)[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint files sorted by round."""
    directory = checkpoint_dir(run_dir)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def load_latest(run_dir: Path) -> dict | None:
    """The newest checkpoint's state, or None if the run has none."""
    paths = list_checkpoints(run_dir)
    return torch.load(paths[-1], map_location="cpu", weights_only=True) if paths else None
