"""`offsite derive`: an emulator (stand-in) of a full model, saved with its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coordinator.cli.checks import EMULATOR_METHODS as METHODS
from coordinator.cli.common import console, fail, progress, status


def derive(
    out: Annotated[Path, typer.Option(help="Directory to write the emulator to.")],
    model: Annotated[
        str, typer.Option(help="zoo:NAME or a local Hugging Face checkpoint directory.")
    ] = "zoo:base",
    method: Annotated[
        str,
        typer.Option(
            help="crash (clustered middle), uniform (every k-th middle block) or full (no compression)."
        ),
    ] = "crash",
    first: Annotated[int, typer.Option(min=0, help="Adapter blocks at the bottom.")] = 2,
    last: Annotated[int, typer.Option(min=0, help="Adapter blocks at the top.")] = 2,
    keep: Annotated[
        int,
        typer.Option(
            min=0,
            help="Blocks (uniform) or clusters (crash) kept for the middle (0: by model size, about a third).",
        ),
    ] = 0,
    placement: Annotated[str, typer.Option(help="edges (first/last) or spread (crash only).")] = "edges",
    clustering: Annotated[
        str, typer.Option(help="crash: balanced (≤ ceil(middle/keep) blocks a cluster) or adjacent.")
    ] = "balanced",
    share: Annotated[
        str, typer.Option(help="crash: full, partial:R, none (kept blocks once) or auto (by model size).")
    ] = "auto",
    distill_steps: Annotated[
        int, typer.Option(min=0, help="Distil the middle for this many steps (0: off).")
    ] = 0,
    seed: Annotated[int, typer.Option(help="Random seed of the distillation batches.")] = 0,
) -> None:
    """Derive an emulator (stand-in) from a full model and save it with its manifest.

    Seconds on zoo:base; CRaSh's layer-similarity step takes about a minute on a 135M-parameter model.
    """
    from coordinator.cli.checks import check_model

    if method not in METHODS:
        fail(f"--method: unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if placement not in ("edges", "spread"):
        fail(f"--placement: unknown placement {placement!r}; choose edges or spread")
    check_model(model)

    from emulator.derive import EmulatorOptions, derive_emulator
    from emulator.distill import distill, text_rows
    from emulator.recipe import resolve_recipe
    from emulator.zoo import load_model, public_texts

    try:
        with status(f"Loading {model}"):
            full, tok = load_model(model)
        recipe, line = resolve_recipe(full, first, last, None, share, keep)
        console.print(line, highlight=False)
        options = EmulatorOptions(method, first, last, recipe.keep, placement, clustering, recipe.share)
        options.check(full.config.num_hidden_layers)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    calib = text_rows(tok, public_texts(256))
    with progress() as bar:
        task = bar.add_task(
            f"derive {method}", total=1, info="CKA on calibration text" if method == "crash" else ""
        )
        try:
            emu = derive_emulator(full, options, calibration=calib, tokenizer=tok)
        except ValueError as exc:
            fail(str(exc))
        bar.update(task, completed=1, info="")
        if distill_steps:
            dtask = bar.add_task("distil middle", total=distill_steps, info="")
            distill(
                emu,
                full,
                *calib,
                steps=distill_steps,
                seed=seed,
                progress=lambda s, t, d: bar.update(dtask, completed=s, info=f"nmse {d:.3f}"),
            )
    digest = emu.save(out)
    console.print(
        f"Emulator written to {out}: layout {emu.manifest.layout}, adapter blocks "
        f"{emu.manifest.adapter_blocks}, hash {digest[:16]}…"
    )
