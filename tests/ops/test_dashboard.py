"""The web dashboard: its JSON API (on SQLite and PostgreSQL stores), and its pages in real headless
Chromium (Playwright)."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient

from coordinator.ops.dashboard import create_app
from coordinator.ops.runstore import RunStore, default_store_url
from tests.ops.conftest import ARTIFACTS
from tests.ops.entries import make_entry

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Without the background-networking flags Chromium stalls on a closed network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _store_with_runs(tmp_path: Path, url: str | None = None) -> tuple[str, RunStore, int, int]:
    url = url or default_store_url(tmp_path)
    store = RunStore(url)
    baseline = {"full zero-shot": 48.5, "emulator zero-shot": 26.0}
    standin = {"bytes": 9_600_000, "layout": [0, 1, 3, 3, 3, 5, 5, 8, 8, 8, 10, 11]}
    config = {"model": "zoo:base", "task": "wn-category", "emulator": "crash", "clients-per-round": 8}
    live = store.start_run(tmp_path / "run-live", config, 3, baseline, standin)
    for rnd in (1, 2):
        store.round_started(live, rnd, [10**18 + i for i in range(8)])
        store.record_round(live, make_entry(rnd, failed=(5,) if rnd == 2 else ()))
    store.round_started(live, 3, [10**18 + i for i in range(8)])
    dp = store.start_run(tmp_path / "run-dp", config, 2, baseline, standin)
    for rnd in (1, 2):
        store.record_round(dp, make_entry(rnd, epsilon=0.8 * rnd))
    store.finish_run(
        dp,
        {"five_numbers": {**baseline, "emulator FT": 59.0, "plug-in": 63.5, "full FT (centralised)": 70.0}},
    )
    return url, store, live, dp


def test_api_lists_runs_and_shows_live_and_finished_runs(store_url, tmp_path):
    url, _store, live, dp = _store_with_runs(tmp_path, store_url)
    client = TestClient(create_app(url))
    runs = client.get("/api/runs").json()["runs"]
    assert [r["name"] for r in runs] == ["run-dp", "run-live"]
    assert not any(r["stale"] for r in runs)  # the live run's row was written a moment ago
    d = client.get(f"/api/runs/{live}").json()
    assert d["run"]["status"] == "running" and d["run"]["active_round"] == 3
    assert d["five_numbers"] == {
        "full zero-shot": 48.5,
        "emulator zero-shot": 26.0,
        "emulator FT": 38.0,  # the last finished round's
        "plug-in": 50.0,
        "full FT (centralised)": None,
    }
    assert d["privacy"] == {"dp": False, "epsilon": None}
    assert d["bytes"]["down"] == 8 * 13_000_000 + 8 * 3_500_000 and d["bytes"]["standin"] == 9_600_000
    assert len(d["clients"]) == 16 and sum(c["status"] == "timeout" for c in d["clients"]) == 1
    assert d["checks"]["plugin_minus_emulator_ft"] == pytest.approx(12.0)
    f = client.get(f"/api/runs/{dp}").json()
    assert f["privacy"] == {"dp": True, "epsilon": pytest.approx(1.6)}
    assert f["five_numbers"]["plug-in"] == 63.5 and f["five_numbers"]["full FT (centralised)"] == 70.0
    assert client.get("/api/runs/999").status_code == 404
    assert client.get("/runs/999").status_code == 404
    assert "Offsite run" in client.get(f"/runs/{live}").text
    js = client.get("/static/uPlot.iife.min.js")
    assert js.status_code == 200 and "uPlot" in js.text  # served locally, no CDN
    assert client.get("/healthz").json() == {"ok": True}


class _Server:
    """uvicorn serving an app on a free port in a thread, for the browser."""

    def __init__(self, app, port: int):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline, "dashboard did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian: apt-get install chromium)")
def test_dashboard_in_headless_chromium_updates_live(tmp_path, free_port):
    from playwright.sync_api import expect, sync_playwright

    url, store, live, dp = _store_with_runs(tmp_path)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with _Server(create_app(url), free_port) as srv, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1500})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))

        page.goto(srv.url + "/")
        expect(page.locator("#runs tbody tr")).to_have_count(2)
        page.click("text=run-live")
        expect(page.locator("body")).to_have_attribute("data-rounds", "2", timeout=15_000)
        expect(page.locator("#status")).to_have_text("running")
        expect(page.locator("#privacy")).to_have_text("DP off")
        expect(page.locator('#five td[data-key="plug-in"]')).to_have_text("50.0")
        expect(page.locator('#five td[data-key="full zero-shot"]')).to_have_text("48.5")
        # 8 clients x 3 rounds: rounds 1-2 recorded (one timeout), round 3 under way.
        expect(page.locator("#clients tr")).to_have_count(9)
        expect(page.locator("#clients .cell.training")).to_have_count(8)
        expect(page.locator("#clients .cell.timeout")).to_have_count(1)
        expect(page.locator("#clients .cell.ok")).to_have_count(15)
        expect(page.locator("canvas")).to_have_count(4)  # uPlot drew the four charts
        page.screenshot(path=str(ARTIFACTS / "dashboard-running.png"), full_page=True)

        # The run goes on: the page picks up round 3 and the end of the run without a reload.
        store.record_round(live, make_entry(3))
        expect(page.locator("body")).to_have_attribute("data-rounds", "3", timeout=10_000)
        expect(page.locator("#clients .cell.training")).to_have_count(0)
        expect(page.locator('#five td[data-key="plug-in"]')).to_have_text("55.0")
        store.finish_run(live, {"five_numbers": {"full zero-shot": 48.5, "plug-in": 55.0}})
        expect(page.locator("#status")).to_have_text("finished", timeout=15_000)
        page.screenshot(path=str(ARTIFACTS / "dashboard-finished.png"), full_page=True)

        # A run with DP on shows its budget instead of "DP off".
        page.goto(f"{srv.url}/runs/{dp}")
        expect(page.locator("#privacy")).to_have_text("ε = 1.600", timeout=15_000)
        expect(page.locator("#chart-eps canvas")).to_be_visible()
        expect(page.locator("#eps-off")).to_be_hidden()
        expect(page.locator('#five td[data-key="full FT (centralised)"]')).to_have_text("70.0")

        # A running run whose heartbeat is older than its round-timeout: its coordinator is gone.
        gone = store.start_run(tmp_path / "run-gone", {"round-timeout": 0.5}, 3, {}, {})
        time.sleep(1.0)
        page.goto(f"{srv.url}/runs/{gone}")
        expect(page.locator("#status")).to_have_text("stale", timeout=15_000)
        expect(page.locator("#failure-title")).to_have_text("Coordinator gone")
        expect(page.locator("#failure-reason")).to_contain_text("resume=true")
        page.goto(srv.url + "/")
        expect(page.locator("#runs tbody tr").first.locator(".badge")).to_have_text("stale")
        browser.close()
    assert errors == []
    assert (ARTIFACTS / "dashboard-running.png").stat().st_size > 20_000


def test_rounds_without_server_eval_keep_the_latest_measured_accuracy(store_url, tmp_path):
    store = RunStore(store_url)
    run = store.start_run(tmp_path / "run-sparse", {"eval-every": 2}, 3, {"full zero-shot": 48.5}, {})
    store.record_round(run, make_entry(1))
    store.record_round(run, {**make_entry(2), "plug-in": None, "emulator FT": None})  # eval-every skipped it
    d = TestClient(create_app(store_url)).get(f"/api/runs/{run}").json()
    assert [r["plugin_acc"] for r in d["rounds"]] == [make_entry(1)["plug-in"], None]
    assert d["five_numbers"]["plug-in"] == make_entry(1)["plug-in"]
    assert d["five_numbers"]["emulator FT"] == make_entry(1)["emulator FT"]
