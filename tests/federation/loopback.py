"""Real Flower processes on loopback for tests: a SuperLink, SuperNodes and the `flwr` CLI.

Every process runs in its own session and is killed with its process group at the end; every wait
is bounded. `Loopback(tmp)` is insecure; `Loopback(tmp, secure=True)` serves TLS with a private CA
(`protocols.tls.make_certificates`, what `offsite certs` writes) and `--enable-supernode-auth`:
SuperNodes then need an EC key whose public half was registered with `flwr supernode register`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from protocols.tls import CertificatePaths, make_certificates, make_node_key

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_value(value) -> str:
    """A run-config value as TOML for `flwr run --run-config`."""
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


def wait_http(url: str, timeout: float, verify: ssl.SSLContext | bool = True) -> None:
    """Wait until `url` answers 2xx (TLS checked against `verify`); TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0, verify=verify).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not up within {timeout} s")


def base_env() -> dict[str, str]:
    """Environment for every Flower process: telemetry and update checks off, one thread, offline."""
    return {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        # The FAB holds code only; zoo assets come from this checkout, whichever one is pip-installed.
        "OFFSITE_ZOO_DIR": str(ROOT / "emulator" / "zoo"),
    }


class Loopback:
    """One `flower-superlink` with `flower-supernode`s on 127.0.0.1, driven by the `flwr` CLI.

    Insecure by default; with `secure=True`, TLS (certificates in `tmp/certs`) and SuperNode auth.
    """

    def __init__(self, tmp: Path, secure: bool = False):
        self.tmp = tmp
        self.logs = tmp / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs = Processes(self.logs)
        self.port = free_port()
        self.env = base_env()
        self.superlink: subprocess.Popen | None = None
        self.cli_home = tmp / "cli-home"
        self.cli_home.mkdir(exist_ok=True)
        self.certs: CertificatePaths | None = None
        transport = "insecure = true"
        if secure:
            self.certs = make_certificates(tmp / "certs")
            # flwr reads a relative root-certificates path from its working directory: make it absolute.
            transport = f'root-certificates = "{self.certs.ca_cert.resolve()}"'
        (self.cli_home / "config.toml").write_text(
            '[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
            f'address = "127.0.0.1:{self.port}"\n{transport}\n'
        )

    def _transport_args(self) -> list[str]:
        if self.certs is None:
            return ["--insecure"]
        return ["--ssl-ca-certfile", str(self.certs.ca_cert), "--ssl-certfile", str(self.certs.server_cert),
                "--ssl-keyfile", str(self.certs.server_key), "--enable-supernode-auth"]  # fmt: skip

    def start_superlink(self, timeout: float = 60) -> None:
        """Start the SuperLink and wait for its health endpoint."""
        self.superlink = self.procs.start(
            "superlink",
            [str(BIN / "flower-superlink"), *self._transport_args(), "--disable-runtime-dependency-installation",
             "--host", "127.0.0.1", "--port", str(self.port)],
            {**self.env, "FLWR_HOME": str(self.tmp / "superlink-home")},
        )  # fmt: skip
        if self.certs is None:
            wait_http(f"http://127.0.0.1:{self.port}/health", timeout=timeout)
        else:
            trust = ssl.create_default_context(cafile=self.certs.ca_cert)
            wait_http(f"https://127.0.0.1:{self.port}/health", timeout=timeout, verify=trust)

    def node_key(self, name: str) -> tuple[Path, Path]:
        """A new EC SuperNode auth key pair (OpenSSH private key, public key line) for a secure deployment."""
        private, public = make_node_key()
        keys = self.tmp / "node-keys"
        keys.mkdir(exist_ok=True)
        private_path, public_path = keys / f"{name}.key", keys / f"{name}.pub"
        private_path.write_bytes(private)
        private_path.chmod(0o600)
        public_path.write_bytes(public)
        return private_path, public_path

    def register(self, public_key: Path) -> int:
        """`flwr supernode register` a node's public key; the node id the SuperLink assigned."""
        done = self.flwr("supernode", "register", str(public_key), "loopback", "--format", "json", timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        reply = json.loads(done.stdout)
        assert reply.get("success"), done.stdout
        return int(reply["node-id"])

    def supernodes(self) -> list[dict]:
        """`flwr supernode list`: every node the SuperLink knows, with its status (`online`, ...)."""
        listed = self.flwr("supernode", "list", "loopback", "--format", "json", timeout=60)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        return json.loads(listed.stdout)["nodes"]

    def start_supernode(
        self, name: str, node_config: str, auth_key: Path | None = None, max_wait: float = 120
    ) -> subprocess.Popen:
        """Start one SuperNode with its `--node-config` (e.g. its partition and cache directory).

        In a secure deployment it checks the SuperLink's certificate against the CA and, with
        `auth_key` (an OpenSSH EC private key), authenticates as the node registered for that key.
        """
        args = ["--insecure"] if self.certs is None else ["--root-certificates", str(self.certs.ca_cert)]
        if auth_key is not None:
            args += ["--auth-supernode-private-key", str(auth_key)]
        return self.procs.start(
            name,
            [str(BIN / "flower-supernode"), *args, "--superlink", f"127.0.0.1:{self.port}",
             "--port", str(free_port()), "--node-config", node_config, "--max-wait-time", str(max_wait)],
            {**self.env, "FLWR_HOME": str(self.tmp / f"{name}-home")},
        )  # fmt: skip

    def kill(self, proc: subprocess.Popen) -> list[int]:
        """SIGKILL a process started here, its process group and every descendant; the pids killed."""
        import psutil

        try:
            family = [proc.pid, *(p.pid for p in psutil.Process(proc.pid).children(recursive=True))]
        except psutil.NoSuchProcess:
            family = [proc.pid]
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in family:  # in case a child started its own session
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=10)
        return family

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run the `flwr` CLI against this SuperLink."""
        return subprocess.run(
            [str(BIN / "flwr"), *args], env={**self.env, "FLWR_HOME": str(self.cli_home)},
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def submit(self, overrides: dict) -> int:
        """`flwr run` this checkout with run-config overrides; returns the run id."""
        run_config = " ".join(f"{k}={toml_value(v)}" for k, v in overrides.items())
        started = self.flwr("run", str(ROOT), "loopback", "--run-config", run_config, "--format", "json")
        assert started.returncode == 0, started.stdout + started.stderr
        return int(json.loads(started.stdout)["run-id"])

    def status(self, run_id: int) -> str:
        """The SuperLink's status string for a run ('' if unreadable)."""
        listed = self.flwr("ls", "loopback", "--run-id", str(run_id), "--format", "json", timeout=60)
        if listed.returncode != 0:
            return ""
        return json.loads(listed.stdout)["runs"][0]["status"]

    def wait_finished(self, run_id: int, timeout: float) -> str:
        """Poll until the run's status starts with 'finished' or `timeout` seconds pass; the status."""
        status, deadline = "", time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(run_id)
            if status.startswith("finished"):
                break
            time.sleep(2)
        return status

    def serverapp_pids(self) -> list[int]:
        """Process ids of the `flwr-serverapp` processes the SuperLink started (the coordinator)."""
        import psutil

        assert self.superlink is not None
        pids = []
        for p in psutil.Process(self.superlink.pid).children(recursive=True):
            try:
                if any("flwr-serverapp" in part for part in p.cmdline()[:2]):
                    pids.append(p.pid)
            except psutil.Error:  # exited meanwhile, or a finished run's zombie not yet reaped
                pass
        return pids

    def diagnostics(self, run_id: int) -> str:
        """The run's log as the SuperLink holds it, plus the tail of every process log."""
        shown = self.flwr("log", str(run_id), "loopback", "--show", timeout=60)
        return f"{shown.stdout[-4000:]}\n{self.procs.tail()}"

    def stop(self) -> None:
        """Kill every process started here."""
        self.procs.stop()
