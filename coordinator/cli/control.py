"""`offsite port` and `offsite generate`: put a control model or a proxy-tuning expert to use at decode time."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from coordinator.cli.checks import MODEL_FORMS
from coordinator.cli.common import console, fail, status


def control_kind(path: Path) -> str:
    """'run' (a finished standin=control run), 'model' (a control model directory); exits otherwise.

    Reads only JSON, so a wrong directory is refused before torch loads.
    """
    manifest = path / "standin" / "manifest.json"
    if manifest.is_file():
        # Checked first: a run directory also holds a config.json (its run config).
        method = json.loads(manifest.read_text()).get("method")
        if method != "control":  # emulator.control.model.CONTROL_METHOD
            fail(
                f"--control: {path} is a run with an emulator stand-in ({method}), not a control run; "
                'give a control model directory or a run made with -c standin="control"'
            )
        if not (path / "adapter.safetensors").is_file():
            fail(f"--control: {path} is a control run that has not finished (no adapter.safetensors yet)")
        return "run"
    config = path / "config.json"
    if config.is_file() and "model_type" in json.loads(config.read_text()):
        return "model"
    fail(f"--control: {path} is neither a control model directory nor a finished standin=control run")
    return ""


def _load_control(path: Path):
    """(control model, tokenizer) from a control directory or a finished `standin=control` run directory."""
    from emulator.control.model import control_from_state, load_control

    if control_kind(path) == "model":
        return load_control(path)
    from transformers import AutoTokenizer

    from coordinator.federation.loop import load_adapter

    meta = json.loads((path / "standin" / "manifest.json").read_text())
    tok = AutoTokenizer.from_pretrained(path / "standin", local_files_only=True)
    return control_from_state(meta["options"]["control_config"], load_adapter(path)), tok


def port(
    control: Annotated[
        Path, typer.Option(help="Control model directory, or a finished standin=control run.")
    ],
    target: Annotated[
        str,
        typer.Option(help=f"Target model: {MODEL_FORMS}."),
    ],
    out: Annotated[Path, typer.Option(help="Where to write control/ and token_map.safetensors.")],
) -> None:
    """Map a control model onto a target's vocabulary (PM-MinED) and save both, with coverage statistics."""
    from coordinator.cli.checks import check_model

    control_kind(control)
    check_model(target, "--target")
    from emulator.control.model import save_control
    from emulator.control.token_map import map_tokenizers
    from emulator.zoo import load_model

    try:
        model, ctok = _load_control(control)
        with status(f"Loading {target}"):
            _, ttok = load_model(target)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        fail(str(exc))
    with status("Mapping the vocabularies (PM-MinED)"):
        tmap = map_tokenizers(ttok, ctok)
    save_control(model, ctok, out / "control")
    tmap.save(out / "token_map.safetensors")
    (out / "port.json").write_text(json.dumps({"target": target, "stats": tmap.stats}, indent=2) + "\n")
    table = Table("target vocab", "exact", "approximate", "special", "unmapped", "seconds")
    s = tmap.stats
    table.add_row(str(s["target_vocab"]), *(f"{100 * s.get(k + '_share', 0):.1f}%" for k in
                  ("exact", "approximate", "special", "unmapped")), f"{s.get('seconds', 0):.2f}")  # fmt: skip
    console.print(table)
    console.print(f"Ported control model written to {out}")


def generate(
    prompt: Annotated[list[str], typer.Option(help="Prompt text (repeat for a batch).")],
    model: Annotated[
        str,
        typer.Option(help=f"Target / base model: {MODEL_FORMS}."),
    ] = "zoo:base",
    control: Annotated[Path | None, typer.Option(help="A directory written by `offsite port`.")] = None,
    proxy: Annotated[
        Path | None,
        typer.Option(help="Proxy-tuning expert: a peft adapter directory (or a checkpoint with --anti)."),
    ] = None,
    anti: Annotated[str, typer.Option(help="Anti-expert (the untuned small model).")] = "zoo:small",
    alpha: Annotated[float, typer.Option(help="Strength of the control shift / expert difference.")] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate per prompt.")] = 16,
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature (0: greedy).")] = 0.0,
    top_p: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Nucleus sampling: keep the top tokens of this mass (0 < p <= 1)."
        ),
    ] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed of the sampling (temperature > 0).")] = 0,
) -> None:
    """Decode with a ported control model (--control) or proxy-tuning (--proxy), or the model alone."""
    from coordinator.cli.checks import check_dir, check_model

    if control is not None and proxy is not None:
        fail("choose --control or --proxy, not both")
    if top_p == 0:
        fail("--top-p must be > 0 (1: no nucleus cut)")
    check_model(model)
    if control is not None:
        check_dir(control, "--control", "ported control directory")
    if proxy is not None:
        check_dir(proxy, "--proxy", "expert directory")
        check_model(anti, "--anti")
    # emulator.control.port still passes `past_key_values` (transformers' FutureWarning on every token).
    warnings.filterwarnings("ignore", message=".*past_key_values.* is deprecated", category=FutureWarning)
    from emulator.zoo import load_model

    try:
        with status(f"Loading {model}"):
            target, tok = load_model(model)
        warn_long_prompts(tok, prompt, max_new_tokens, context_length(target))
        if control is not None:
            from emulator.control.model import load_control
            from emulator.control.port import generate_with_control
            from emulator.control.token_map import load_token_map, map_tokenizers

            cmodel, ctok = load_control(control / "control" if (control / "control").is_dir() else control)
            map_path = control / "token_map.safetensors"
            tmap = load_token_map(map_path) if map_path.exists() else map_tokenizers(tok, ctok)
            if tmap.index.numel() != len(tok):
                raise ValueError(
                    f"{map_path} was made for another target vocabulary; run `offsite port` again"
                )
            new = generate_with_control(target, tok, cmodel, ctok, tmap, prompt, alpha=alpha,
                                        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                        seed=seed)  # fmt: skip
        else:
            from emulator.proxy import SmallPair, check_same_vocab, proxy_generate

            pair = None
            if proxy is not None:
                small, stok = load_model(anti)
                check_same_vocab(tok, stok, target, small)
                if (proxy / "adapter_config.json").exists():
                    from peft import PeftModel

                    pair = SmallPair.split(PeftModel.from_pretrained(small, proxy).eval())
                else:
                    expert, etok = load_model(str(proxy))
                    check_same_vocab(tok, etok, target, expert)
                    pair = SmallPair(expert, small)
            new = proxy_generate(target, tok, prompt, pair, alpha=alpha, max_new_tokens=max_new_tokens,
                                 temperature=temperature, top_p=top_p, seed=seed)  # fmt: skip
    except (FileNotFoundError, ValueError, KeyError) as exc:
        fail(str(exc))
    for p, ids in zip(prompt, new, strict=True):
        console.print(f"[bold]{p}[/bold]{tok.decode(ids, skip_special_tokens=True)}")


def context_length(model) -> int | None:
    """The longest sequence the model was built for (its position table), if it says."""
    return getattr(model.config, "max_position_embeddings", None)


def warn_long_prompts(tok, prompts: list[str], max_new_tokens: int, limit: int | None) -> None:
    """Warn for each prompt whose tokens plus --max-new-tokens exceed the model's context."""
    if not limit:
        return
    for text in prompts:
        n = len(tok(text, add_special_tokens=False)["input_ids"])
        if n + max_new_tokens > limit:
            shown = text if len(text) <= 40 else text[:37] + "..."
            console.print(
                f"[yellow]Warning:[/yellow] prompt {shown!r} is {n} tokens; with --max-new-tokens "
                f"{max_new_tokens} that exceeds the model's context of {limit} tokens, so the output "
                "will not be meaningful. Shorten the prompt.",
                highlight=False,
            )
