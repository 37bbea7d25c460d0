"""Dashboard pages a browser sees for bad addresses, offline API docs, and refused directories."""

import json

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from coordinator.cli import app
from coordinator.ops.dashboard import create_app
from coordinator.ops.dashboard.app import STATIC
from coordinator.ops.runstore import RunStore, default_store_url


def _client(tmp_path) -> tuple[TestClient, RunStore]:
    url = default_store_url(tmp_path)
    return TestClient(create_app(url)), RunStore(url)


def test_missing_run_gets_an_html_404_page(tmp_path):
    client, _ = _client(tmp_path)
    page = client.get("/runs/999")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "No run 999" in page.text and 'href="/"' in page.text
    assert client.get("/api/runs/999").json() == {"detail": "no run 999"}


def test_api_docs_are_served_without_a_cdn(tmp_path):
    client, _ = _client(tmp_path)
    docs = client.get("/api/docs")
    assert docs.status_code == 200 and "/api/runs/{run_id}" in docs.text
    assert "cdn" not in docs.text.lower() and "http" not in docs.text.replace('href="/', "")
    assert client.get("/api/openapi.json").json()["info"]["title"] == "Offsite dashboard"


def test_run_page_shows_a_failure_banner_and_labels_the_client_grid(tmp_path):
    client, store = _client(tmp_path)
    run_id = store.start_run(tmp_path / "run-x", {"model": "zoo:base"}, 3, {}, {})
    store.fail_run(run_id, "ValueError: lr must be > 0")
    detail = client.get(f"/api/runs/{run_id}").json()
    assert detail["run"]["status"] == "failed" and "lr must be > 0" in detail["run"]["error"]
    html = (STATIC / "run.html").read_text()
    assert 'id="failure"' in html and "training loss" in html
    js = (STATIC / "dashboard.js").read_text()
    assert 'run.status === "failed"' in js and "failure-reason" in js


def test_dashboard_refuses_an_out_dir_that_does_not_exist(tmp_path):
    result = CliRunner().invoke(app, ["dashboard", "--out-dir", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not (tmp_path / "nope").exists()


def test_port_says_an_emulator_run_is_not_a_control_run(tmp_path):
    run = tmp_path / "run-emu"
    (run / "standin").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"rounds": 3}))
    (run / "standin" / "manifest.json").write_text(json.dumps({"method": "crash"}))
    (run / "adapter.safetensors").write_bytes(b"")
    args = ["port", "--control", str(run), "--target", "zoo:other", "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "is a run with an emulator stand-in (crash), not a control run" in result.output
    neither = CliRunner().invoke(app, ["port", "--control", str(tmp_path), "--target", "zoo:other",
                                       "--out", str(tmp_path / "o")])  # fmt: skip
    assert neither.exit_code == 2 and "neither a control model directory" in neither.output
