"""The web dashboard: a FastAPI app over the run store, with a JSON API and two static pages.

`/` lists runs; `/runs/{id}` shows one run (clients per round, accuracy/loss curves, bytes, ε,
the five-number table) and polls `/api/runs/{id}` every two seconds while the run goes on.
Charts are drawn by uPlot, served from the package (`static/`), so nothing comes from a CDN.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from coordinator.ops.runstore.store import RunStore, public_url

STATIC = Path(__file__).resolve().parent / "static"
FIVE = ("full zero-shot", "emulator zero-shot", "emulator FT", "plug-in", "full FT (centralised)")


def five_numbers(run: dict, rounds: list[dict]) -> dict:
    """The five numbers (docs/architecture.md, evaluation protocol) as known so far: baselines, the last round's plug-in/emulator FT, report."""
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


def create_app(store_url: str) -> FastAPI:
    """The dashboard app reading the run store at `store_url`."""
    store = RunStore(store_url)
    app = FastAPI(title="Offsite dashboard", docs_url="/api/docs", redoc_url=None)
    app.state.store = store
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/runs/{run_id}", include_in_schema=False)
    def run_page(run_id: int) -> FileResponse:
        if store.get_run(run_id) is None:
            raise HTTPException(404, f"no run {run_id}")
        return FileResponse(STATIC / "run.html")

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
