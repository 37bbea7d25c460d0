"""Faults on a real deployment: TLS with SuperNode auth, an unregistered node, a site killed mid-round,
a malformed local data file.

One `flower-superlink` on 127.0.0.1 serves TLS from a private CA (`protocols.tls.make_certificates`,
what `offsite certs` writes) with `--enable-supernode-auth`; each site's EC public key is registered
with `flwr supernode register`, and the `flwr` CLI trusts the CA through `root-certificates`. Sites pin
the coordinator's payload key. Two runs on that one deployment:

1. Two registered sites, two rounds, while a third SuperNode with a key that was never registered
   tries to join: it is refused at activation and never becomes a node; the run completes over TLS.
2. Two more registered sites join, one round over all four with `min-clients=2`: one site is SIGKILLed
   (its process group and every child) once its training has begun, another reads a JSONL file with
   a broken line. The SuperLink misses the killed site's heartbeats (flwr 1.42: 2 × 30 s) and answers
   for it with a Node Unavailable error, so the round completes before `round-timeout` with the two
   healthy sites' updates; the report names the killed site and the broken file's site `failed`,
   the latter with `file:line`.

Every wait is bounded and every process is killed with its process group at the end. On a machine
busier than 2 free cores, stretch every timeout with `OFFSITE_TEST_TIME_SCALE` (e.g. 3).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil
import pytest

from coordinator.federation.lineage import verify_lineage
from protocols.signing import load_public_key
from tests.federation.loopback import Loopback

SCALE = float(os.environ.get("OFFSITE_TEST_TIME_SCALE", "1"))
# The fault round's bound. A SuperNode heartbeats every ~24 s and the SuperLink declares it unavailable
# 60 s after the last one (flwr 1.42, not configurable), so the killed site's verdict comes at most
# 60 s after the kill, itself 10-40 s into the round: the round ends then, well before this bound,
# and the outcome is the SuperLink's, not a race with the timeout.
ROUND_TIMEOUT = 120.0 * SCALE


def _wait_online(net: Loopback, node_ids: set[int], timeout: float) -> list[dict]:
    """Poll `flwr supernode list` until every node in `node_ids` is online; the listing."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = net.supernodes()
        online = {int(n["node-id"]) for n in nodes if n["status"] == "online"}
        if node_ids <= online:
            return nodes
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"nodes {node_ids - online} not online in {timeout} s: {nodes}\n{net.procs.tail()}"
            )
        time.sleep(0.5)


def _wait_training_started(cache: Path, timeout: float) -> float:
    """Wait until a site begins storing the stand-in its round-1 train message carried; seconds waited.

    The stand-in only comes with a train message, and the site stores it before it loads its data and
    trains, so anything in its (new, empty) cache directory means training has begun there.
    """
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if cache.is_dir() and any(cache.iterdir()):
            return time.monotonic() - start
        time.sleep(0.05)
    raise TimeoutError(f"no train message reached {cache} in {timeout} s")


def _running_commands(pid: int) -> list[str]:
    """The first two words of the command line of each live descendant of `pid`."""
    out = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            out.append(" ".join(child.cmdline()[:2]))
        except psutil.Error:  # exited, or a zombie not yet reaped
            pass
    return out


def _dead(pid: int) -> bool:
    """Whether a process is gone (a zombie not yet reaped counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _broken_data_file(path: Path) -> Path:
    """A site's JSONL training file whose third line is cut short."""
    good = {"prompt": "A sparrow is a kind of", "choices": ["bird", "stone"], "answer": 0}
    path.write_text(
        json.dumps(good) + "\n" + json.dumps(good) + "\n" + '{"prompt": "A trout is a kind of", "cho\n'
    )
    return path


@pytest.mark.slow
def test_tls_node_auth_and_faults_on_a_real_deployment(quick_run, pinned_key, tmp_path):
    signing_key, coordinator_pub = pinned_key
    net = Loopback(tmp_path, secure=True)
    out = Path(quick_run["out-dir"])
    trust = f"coordinator-key='{coordinator_pub}' require-signature=true"

    def site_config(name: str, data: str) -> str:
        return f"{data} cache-dir='{tmp_path / 'cache' / name}' {trust}"

    try:
        net.start_superlink()
        keys = {name: net.node_key(name) for name in ("site-0", "site-1", "site-2", "site-3", "intruder")}
        ids = {name: net.register(keys[name][1]) for name in ("site-0", "site-1")}
        for i, name in enumerate(ids):
            net.start_supernode(name, site_config(name, f"partition-id={i} num-partitions=2"), keys[name][0])
        # Never registered: the SuperLink refuses to activate it and it gives up.
        intruder = net.start_supernode(
            "intruder", site_config("intruder", "partition-id=0 num-partitions=2"), keys["intruder"][0]
        )
        _wait_online(net, set(ids.values()), timeout=60 * SCALE)
        intruder_rc = intruder.wait(timeout=60 * SCALE)
        intruder_log = (net.logs / "intruder.log").read_text()
        assert intruder_rc != 0 and "Failed to activate SuperNode" in intruder_log, intruder_log[-3000:]
        assert "No SuperNode found with the given public key" in (net.logs / "superlink.log").read_text()
        assert {int(n["node-id"]) for n in net.supernodes()} == set(ids.values())

        # 1. A full run over TLS with the two registered sites.
        base = {
            **quick_run,
            "signing-key": signing_key,
            "min-clients": 2,
            "node-timeout": 30.0 * SCALE,
            "query-timeout": 20.0 * SCALE,  # the first query also installs the FAB on the site
            "round-timeout": 60.0 * SCALE,
        }
        run_id = net.submit({**base, "rounds": 2, "clients-per-round": 2, "run-name": "tls"})
        status = net.wait_finished(run_id, timeout=180 * SCALE)
        assert status == "finished:completed", net.diagnostics(run_id)
        report = json.loads((out / "tls" / "report.json").read_text())
        assert [r["round"] for r in report["rounds"]] == [1, 2], net.diagnostics(run_id)
        for r in report["rounds"]:
            statuses = {c["node"]: c["status"] for c in r["clients"]}
            assert statuses == dict.fromkeys(ids.values(), "ok"), net.diagnostics(run_id)
        lineage = verify_lineage(out / "tls", load_public_key(coordinator_pub))
        assert [{u["node"] for u in r["updates"]} for r in lineage] == [set(ids.values())] * 2

        # 2. Four registered sites, min-clients 2: one killed mid-training, one with a broken data file.
        broken = _broken_data_file(tmp_path / "broken.jsonl")
        ids |= {name: net.register(keys[name][1]) for name in ("site-2", "site-3")}
        victim = net.start_supernode(
            "site-2", site_config("site-2", "partition-id=1 num-partitions=2"), keys["site-2"][0]
        )
        net.start_supernode("site-3", site_config("site-3", f"data-path='{broken}'"), keys["site-3"][0])
        _wait_online(net, set(ids.values()), timeout=60 * SCALE)
        faults = {**base, "rounds": 1, "clients-per-round": 4, "round-timeout": ROUND_TIMEOUT}
        faults_id = net.submit({**faults, "run-name": "faults"})
        waited = _wait_training_started(tmp_path / "cache" / "site-2", timeout=120 * SCALE)
        family = _running_commands(victim.pid)
        killed = net.kill(victim)
        status = net.wait_finished(faults_id, timeout=ROUND_TIMEOUT + 90 * SCALE)
        diagnostics = f"killed site-2 {killed} {family} after {waited:.1f} s\n" + net.diagnostics(faults_id)
        assert any("flwr-clientapp" in cmd for cmd in family), diagnostics  # killed while it trained
        assert all(_dead(pid) for pid in killed), diagnostics
        assert status == "finished:completed", diagnostics
        report = json.loads((out / "faults" / "report.json").read_text())
        (round1,) = report["rounds"]
        rows = {c["node"]: c for c in round1["clients"]}
        print("fault round", json.dumps({n: (c["status"], c["reason"][-300:]) for n, c in rows.items()}))
        assert set(rows) == set(ids.values()), diagnostics
        assert rows[ids["site-0"]]["status"] == rows[ids["site-1"]]["status"] == "ok", diagnostics
        assert rows[ids["site-2"]]["status"] == "failed", diagnostics
        assert "Node Unavailable" in rows[ids["site-2"]]["reason"], diagnostics
        assert rows[ids["site-3"]]["status"] == "failed", diagnostics
        assert f"{broken}:3" in rows[ids["site-3"]]["reason"], diagnostics
        assert round1["updated"] and round1["train_s"] < ROUND_TIMEOUT, diagnostics
        (record,) = verify_lineage(out / "faults", load_public_key(coordinator_pub))
        assert {u["node"] for u in record["updates"]} == {ids["site-0"], ids["site-1"]}
    finally:
        net.stop()
