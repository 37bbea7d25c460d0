"""The web dashboard: a FastAPI app over the run store, with a JSON API and two static pages.

`/` lists runs; `/runs/{id}` shows one run (clients per round, accuracy/loss curves, bytes, ε,
the five-number table) and polls `/api/runs/{id}` every two seconds while the run goes on.
Charts are drawn by uPlot, served from the package (`static/`), so nothing comes from a CDN; the API's
page `/api/docs` is a plain list drawn from the OpenAPI schema (FastAPI's Swagger UI would load a CDN).
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from coordinator.ops.runstore.store import RunStore, public_url

STATIC = Path(__file__).resolve().parent / "static"
FIVE = ("full zero-shot", "emulator zero-shot", "emulator FT", "plug-in", "full FT (centralised)")


def five_numbers(run: dict, rounds: list[dict]) -> dict:
    """The five numbers (docs/architecture.md, evaluation protocol) known so far: baselines, last round, report."""
    report = run.get("report") or {}
    if report.get("five_numbers"):
        five = dict(report["five_numbers"])
    else:
        baseline = run.get("baseline") or {}
        # eval-every leaves some rounds without server accuracy: show the latest measured one
        last = next((r for r in reversed(rounds) if r.get("plugin_acc") is not None), {})
        five = {
            "full zero-shot": baseline.get("full zero-shot"),
            "emulator zero-shot": baseline.get("emulator zero-shot"),
            "emulator FT": last.get("emulator_ft_acc"),
            "plug-in": last.get("plugin_acc"),
            "full FT (centralised)": None,
        }
    return {k: five.get(k) for k in FIVE}


def run_detail(store: RunStore, run_id: int) -> dict | None:
    """Everything the run page shows, in one JSON object (None if no such run)."""
    run = store.get_run(run_id)
    if run is None:
        return None
    rounds = store.rounds(run_id)
    eps = [r["epsilon"] for r in rounds if r["epsilon"] is not None]
    five = five_numbers(run, rounds)
    zs, emu_ft, plug = five["full zero-shot"], five["emulator FT"], five["plug-in"]
    checks = None
    if None not in (zs, emu_ft, plug):
        checks = {
            "plugin_minus_emulator_ft": plug - emu_ft,
            "plugin_minus_full_zero_shot": plug - zs,
            "cpl_ratio": (five["emulator zero-shot"] / zs)
            if zs and five["emulator zero-shot"] is not None
            else None,
            "success": plug > zs and plug > emu_ft,
        }
    return {
        "run": run,
        "rounds": rounds,
        "clients": store.client_rounds(run_id),
        "events": store.events(run_id, limit=100),
        "five_numbers": five,
        "checks": checks,
        "privacy": {"dp": bool(eps), "epsilon": eps[-1] if eps else None},
        "bytes": {
            "down": sum(r["bytes_down"] for r in rounds),
            "up": sum(r["bytes_up"] for r in rounds),
            "standin": (run.get("standin") or {}).get("bytes"),
        },
    }


_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="/static/dashboard.css"></head><body>
<header><a class="brand" href="/">Offsite</a><span class="sub">{title}</span></header>
<main><section class="card wide">{body}</section></main></body></html>"""


def not_found_page(run_id: int) -> str:
    """The HTML page for a run id the store does not have."""
    body = f'<h2>No run {run_id}</h2><p>The run store has no run with this id. <a href="/">All runs</a></p>'
    return _PAGE.format(title="run not found", body=body)


def api_docs_page(schema: dict) -> str:
    """The JSON API's endpoints and their summaries, as one offline HTML page."""
    rows = []
    for path, methods in schema.get("paths", {}).items():
        for method, op in methods.items():
            text = html.escape(op.get("description") or op.get("summary") or "")
            rows.append(
                f"<tr><td>{method.upper()}</td><td><code>{html.escape(path)}</code></td><td>{text}</td></tr>"
            )
    body = (
        '<h2>JSON API</h2><table class="grid"><thead><tr><th>method</th><th>path</th><th>returns</th></tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
        '<p class="small">The full schema: <a href="/api/openapi.json">/api/openapi.json</a></p>'
    )
    return _PAGE.format(title="API", body=body)


def create_app(store_url: str) -> FastAPI:
    """The dashboard app reading the run store at `store_url`."""
    store = RunStore(store_url)
    app = FastAPI(title="Offsite dashboard", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.store = store
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/runs/{run_id}", include_in_schema=False, response_model=None)
    def run_page(run_id: int) -> FileResponse | HTMLResponse:
        if store.get_run(run_id) is None:
            return HTMLResponse(not_found_page(run_id), status_code=404)
        return FileResponse(STATIC / "run.html")

    @app.get("/api/docs", include_in_schema=False)
    def api_docs() -> HTMLResponse:
        return HTMLResponse(api_docs_page(app.openapi()))

    @app.get("/api/runs")
    def api_runs() -> dict:
        """Every run, newest first."""
        return {"store": public_url(store_url), "runs": store.list_runs()}

    @app.get("/api/runs/{run_id}")
    def api_run(run_id: int) -> dict:
        """One run: its row, rounds, clients, events, five numbers, privacy and bytes."""
        detail = run_detail(store, run_id)
        if detail is None:
            raise HTTPException(404, f"no run {run_id}")
        return detail

    @app.get("/healthz")
    def healthz() -> dict:
        """Liveness: the store answers."""
        store.list_runs()
        return {"ok": True}

    return app
