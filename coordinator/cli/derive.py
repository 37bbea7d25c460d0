"""`offsite derive`: an emulator (stand-in) of a full model, saved with its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coordinator.cli.checks import EMULATOR_METHODS as METHODS
from coordinator.cli.checks import MODEL_FORMS
from coordinator.cli.common import console, fail, progress, status


def derive(
    out: Annotated[Path, typer.Option(help="Directory to write the emulator to.")],
    model: Annotated[
        str,
        typer.Option(help=f"The full model: {MODEL_FORMS}."),
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
    distill_text: Annotated[
        str,
        typer.Option(help="Distillation text: 'self' (sampled from the full model) or a public text file."),
    ] = "self",
    distill_loss: Annotated[
        str, typer.Option(help="Distillation loss: lm+nmse, nmse or layers.")
    ] = "lm+nmse",
    distill_lr: Annotated[float, typer.Option(min=0.0, help="Distillation learning rate.")] = 1e-4,
    seed: Annotated[int, typer.Option(help="Random seed of the distillation batches.")] = 0,
) -> None:
    """Derive an emulator (stand-in) from a full model and save it with its manifest.

    Seconds on zoo:base; CRaSh's layer-similarity step takes about a minute on a 135M-parameter model.
    """
    from coordinator.cli.checks import check_model
    from coordinator.cli.experiment import check_distillation

    if method not in METHODS:
        fail(f"--method: unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if placement not in ("edges", "spread"):
        fail(f"--placement: unknown placement {placement!r}; choose edges or spread")
    check_model(model)
    check_distillation(distill_text, distill_loss)

    from emulator.derive import EmulatorOptions, derive_emulator
    from emulator.distill import text_rows
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
            settings = {"steps": distill_steps, "lr": distill_lr, "loss": distill_loss, "seed": seed}
            _distil(bar, emu, full, tok, distill_text, settings)
    digest = emu.save(out)
    console.print(
        f"Emulator written to {out}: layout {emu.manifest.layout}, adapter blocks "
        f"{emu.manifest.adapter_blocks}, hash {digest[:16]}…"
    )


def _distil(bar, emu, full, tok, text: str, settings: dict) -> None:
    """Distil the emulator's middle on `text` ('self' or a file), with progress, held-out choice and perplexity."""
    from emulator.distill import distill, distill_corpus

    what = "sampling text from the full model" if text == "self" else f"reading {text}"
    ttask = bar.add_task("distillation text", total=None, info=what)
    try:
        rows, held = distill_corpus(full, tok, text, seed=settings["seed"],
                                    progress=lambda d, t: bar.update(ttask, completed=d, total=t))  # fmt: skip
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    bar.update(ttask, info=f"{len(rows[0]) + len(held[0])} texts")
    dtask = bar.add_task("distil middle", total=settings["steps"], info="")
    stats = distill(emu, full, *rows, heldout=held, progress=lambda s, t, d: bar.update(
        dtask, completed=s, info=f"nmse {d:.3f}"), **settings)  # fmt: skip
    console.print(
        f"Distilled {stats['steps']} steps ({stats['loss']}, lr {stats['lr']:g}): held-out NMSE "
        f"{stats['best_heldout_nmse']:.3f} (best at step {stats['best_step']}), emulator perplexity "
        f"{stats['heldout_perplexity']:.1f} on held-out text",
        highlight=False,
    )
