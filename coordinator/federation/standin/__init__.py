"""Stand-in kinds: what a site tunes in place of the full model, behind one interface.

Each kind is a module with `build(cfg, full, tokenizer) -> Emulator`, `initial_adapter(cfg, full,
emu) -> adapter` and `evaluate(full, emu, tok, adapter, lora_rank, eval_set) -> {"plug-in",
"emulator FT"}`. Run-config `standin` takes its values from `STANDIN_KINDS`; a kind's module is
imported when a run uses it, so the run config can list the kinds without loading them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from emulator.control.model import CONTROL_METHOD
from emulator.emulator import Emulator


@dataclass(frozen=True)
class StandinKind:
    """A registered stand-in kind: its name, the module that implements it, and what it is."""

    name: str
    module: str
    summary: str

    def impl(self) -> ModuleType:
        """The kind's module (build, initial_adapter, evaluate)."""
        return importlib.import_module(self.module)


STANDIN_KINDS: dict[str, StandinKind] = {
    k.name: k
    for k in (
        StandinKind("emulator", "coordinator.federation.standin.emulator", "a CRaSh or uniform emulator"),
        StandinKind(
            "control", "coordinator.federation.standin.control", "a template plus a tiny control model"
        ),
    )
}


def kind_of(emu: Emulator) -> StandinKind:
    """The kind of a built or loaded stand-in, read from its manifest."""
    return STANDIN_KINDS["control" if emu.manifest.method == CONTROL_METHOD else "emulator"]
