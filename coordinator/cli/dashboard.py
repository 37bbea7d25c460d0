"""`offsite dashboard`: the web dashboard over the run store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coordinator.cli.common import console, fail


def dashboard(
    store: Annotated[
        str, typer.Option(help="Run store URL, as run-config store-url (default: offsite.db in --out-dir).")
    ] = "",
    out_dir: Annotated[Path, typer.Option(help="The runs' out-dir, for the default store.")] = Path(
        "~/.offsite/runs"
    ),
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8765,
) -> None:
    """Serve the web dashboard: runs, clients per round, curves, bytes, ε; live while runs go on."""
    if not store and not out_dir.expanduser().is_dir():
        fail(f"--out-dir: {out_dir} does not exist (no runs there yet); pass the out-dir of your runs or --store")
    import uvicorn

    from coordinator.ops.dashboard import create_app
    from coordinator.ops.runstore import StoreError, default_store_url, public_url

    url = store or default_store_url(out_dir)
    try:
        web = create_app(url)
    except StoreError as exc:
        fail(str(exc))
    console.print(f"Dashboard of {public_url(url)} on http://{host}:{port}/  (Ctrl-C stops it)")
    uvicorn.run(web, host=host, port=port, log_level="warning")
