"""deploy/: the compose file and Kubernetes manifests validate, keep TLS and node auth on, and the
Grafana dashboard and Prometheus config name metrics the coordinator really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from coordinator.ops.metrics import MetricsObserver, OffsiteMetrics
from tests.ops.entries import make_entry

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
K8S = DEPLOY / "k8s"
MANIFESTS = ["namespace.yaml", "superlink.yaml", "supernodes.yaml", "monitoring.yaml"]
K8S_VERSION = "1.32.0"


def _compose_cli() -> list[str] | None:
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_keeps_tls_and_node_auth_on():
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert {"superlink", "dashboard", "prometheus", "grafana"} <= set(services)
    supernodes = [name for name in services if name.startswith("supernode-")]
    assert len(supernodes) >= 2
    link = " ".join(services["superlink"]["command"])
    for flag in ("--ssl-certfile", "--ssl-keyfile", "--ssl-ca-certfile", "--enable-supernode-auth"):
        assert flag in link
    assert "--insecure" not in COMPOSE.read_text()
    for name in supernodes:
        cmd = " ".join(services[name]["command"])
        assert "--root-certificates" in cmd and "--auth-supernode-private-key" in cmd
        assert "require-signature=true" in cmd
    partitions = sorted(
        re.search(r"partition-id=(\d+)", " ".join(services[n]["command"])).group(1) for n in supernodes
    )
    assert partitions == [str(i) for i in range(len(supernodes))]  # every site plays its own partition


@pytest.mark.skipif(_compose_cli() is None, reason="no docker compose / docker-compose client")
def test_compose_config_validates():
    cli = _compose_cli()
    proc = subprocess.run(
        [*cli, "-p", "offsite", "-f", str(COMPOSE), "config", "--services"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "GRAFANA_ADMIN_PASSWORD": "test"},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert {"superlink", "supernode-1", "dashboard", "prometheus", "grafana"} <= set(proc.stdout.split())


def test_k8s_manifests_validate_against_the_kubernetes_schema():
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (dev extra)")
    kinds = []
    for name in MANIFESTS:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            kv.validate(doc, K8S_VERSION, strict=True)
            kinds.append(doc["kind"])
    assert {"Deployment", "StatefulSet", "Service", "PersistentVolumeClaim", "Namespace"} <= set(kinds)
    superlink = next(
        d for d in yaml.safe_load_all((K8S / "superlink.yaml").read_text()) if d["kind"] == "Deployment"
    )
    args = superlink["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--enable-supernode-auth" in args and not any("--insecure" in a for a in args)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl for `kubectl kustomize`")
def test_k8s_kustomization_builds_and_validates():
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (dev extra)")
    proc = subprocess.run(
        ["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(K8S)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    docs = list(yaml.safe_load_all(proc.stdout))
    for doc in docs:
        kv.validate(doc, K8S_VERSION, strict=True)
    maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    dashboard = json.loads(maps["offsite-grafana-dashboards"]["data"]["offsite-dashboard.json"])
    assert dashboard["uid"] == "offsite-federation"
    assert all(d["metadata"]["namespace"] == "offsite" for d in docs if d["kind"] != "Namespace")


def test_grafana_and_prometheus_name_exported_metrics():
    registry = CollectorRegistry()
    obs = MetricsObserver(OffsiteMetrics(registry))
    obs.run_started(Path("/runs/r"), {"rounds": 2}, {"full zero-shot": 40.0}, {}, [])
    obs.round_finished(make_entry(1, epsilon=0.7, failed=(3,)))
    exported = set(re.findall(r"^(offsite_\w+?)(?:\{| )", generate_latest(registry).decode(), re.M))
    dashboard = json.loads((DEPLOY / "grafana" / "offsite-dashboard.json").read_text())
    used = {
        m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"offsite_\w+", t["expr"])
    }
    assert used and used <= exported, used - exported
    assert "offsite_dp_epsilon" in exported and "offsite_client_failures_total" in exported
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert "superlink:9464" in targets
