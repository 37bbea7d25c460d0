"""End to end through real Flower processes: one `flower-superlink`, two `flower-supernode`s, `flwr run`.

Loopback only, `--insecure` (TLS is tested elsewhere), runtime dependency installation disabled,
telemetry off. Every wait is bounded, and every process is killed with its process group at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


class Processes:
    """Start processes in their own sessions; kill every group on exit."""

    def __init__(self, logs: Path):
        self.logs, self.procs = logs, []

    def start(self, name: str, args: list[str], env: dict) -> subprocess.Popen:
        out = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process group
        proc = subprocess.Popen(
            args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.logs
        )
        self.procs.append((proc, out))
        return proc

    def stop(self) -> None:
        for proc, _ in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        for proc, out in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
            out.close()

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in sorted(self.logs.glob("*.log")))


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not up within {timeout} s")


@pytest.mark.slow
def test_superlink_and_two_supernodes_two_rounds(small_run, tmp_path):
    port = _free_port()
    logs = tmp_path / "logs"
    logs.mkdir()
    base_env = {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        # The FAB holds code only; zoo assets come from this checkout, whichever one is pip-installed.
        "OFFSITE_ZOO_DIR": str(ROOT / "emulator" / "zoo"),
    }
    cli_home = tmp_path / "cli-home"
    cli_home.mkdir()
    (cli_home / "config.toml").write_text(
        f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    procs = Processes(logs)
    try:
        procs.start(
            "superlink",
            [str(BIN / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
             "--host", "127.0.0.1", "--port", str(port)],
            {**base_env, "FLWR_HOME": str(tmp_path / "superlink-home")},
        )  # fmt: skip
        _wait_http(f"http://127.0.0.1:{port}/health", timeout=60)
        for i in range(2):
            node_config = f"partition-id={i} num-partitions=2 cache-dir='{tmp_path / f'cache-{i}'}'"
            procs.start(
                f"supernode-{i}",
                [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                 "--port", str(_free_port()), "--node-config", node_config, "--max-wait-time", "120"],
                {**base_env, "FLWR_HOME": str(tmp_path / f"supernode-home-{i}")},
            )  # fmt: skip
        overrides = {
            **small_run,
            "emulator": "crash",  # exercises public calibration text found outside the FAB
            "calibration-texts": 16,
            "min-clients": 2,  # wait for both sites (not only until the node count settles)
            "client-eval": "none",  # the Ray test covers evaluate; each message here starts a process
            "node-timeout": 60.0,
            "round-timeout": 120.0,
        }
        cli_env = {**base_env, "FLWR_HOME": str(cli_home)}
        run_config = " ".join(f"{k}={_toml(v)}" for k, v in overrides.items())
        started = subprocess.run(
            [str(BIN / "flwr"), "run", str(ROOT), "loopback", "--run-config", run_config, "--format", "json"],
            env=cli_env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert started.returncode == 0, started.stdout + started.stderr
        run_id = json.loads(started.stdout)["run-id"]
        report_path = Path(small_run["out-dir"]) / "r" / "report.json"
        status, deadline = "", time.monotonic() + 200
        while time.monotonic() < deadline:
            listed = subprocess.run(
                [str(BIN / "flwr"), "ls", "loopback", "--run-id", str(run_id), "--format", "json"],
                env=cli_env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            if listed.returncode == 0:
                status = json.loads(listed.stdout)["runs"][0]["status"]
                if status.startswith("finished"):
                    break
            time.sleep(2)
        shown = subprocess.run(
            [str(BIN / "flwr"), "log", str(run_id), "loopback", "--show"],
            env=cli_env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        diagnostics = f"status {status!r}\n{shown.stdout[-4000:]}\n{procs.tail()}"
        assert status == "finished:completed" and report_path.exists(), diagnostics
        report = json.loads(report_path.read_text())
        rounds = report["rounds"]
        assert [r["round"] for r in rounds] == [1, 2], diagnostics
        assert all(c["status"] == "ok" for r in rounds for c in r["clients"]), diagnostics
        assert [sum(c["standin_sent"] for c in r["clients"]) for r in rounds] == [2, 0]
        print(
            "deployment timing",
            json.dumps(report["timing"]),
            "bytes",
            json.dumps({k: v for k, v in report["bytes"].items() if k != "per_round"}),
        )
        for i in range(2):  # each site keeps the stand-in in its own on-disk cache
            assert (tmp_path / f"cache-{i}" / report["standin"]["hash"] / "manifest.json").exists()
    finally:
        procs.stop()
