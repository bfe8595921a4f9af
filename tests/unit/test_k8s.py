"""config/k8s/ and the image: what the manifests refer to is what the gateway serves."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import metrics
from gateway.admin import build_admin_app
from gateway.config import load_config
from gateway.config.model import Admin, Listen
from tests.harness import REPO

K8S = REPO / "config" / "k8s"


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    """Every object of config/k8s/*.yaml, by kind/name."""
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def sidecar(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers = manifests["Deployment/my-service"]["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "gateway")


def ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def config_path(container: dict[str, Any]) -> str:
    args = container["args"]
    return str(args[args.index("--config") + 1])


def mounted_config(manifests: dict[str, dict[str, Any]], tmp_path: Path) -> Path:
    """The ConfigMap's file, as the container sees it at its --config path."""
    container = sidecar(manifests)
    path = config_path(container)
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volumes = manifests["Deployment/my-service"]["spec"]["template"]["spec"]["volumes"]
    volume = next(v for v in volumes if v["name"] == mount["name"])
    config_map = manifests[f"ConfigMap/{volume['configMap']['name']}"]
    file = tmp_path / "gateway.yaml"
    file.write_text(config_map["data"][path.removeprefix(mount["mountPath"] + "/")])
    return file


def test_the_configmap_is_a_valid_config_at_the_path_the_sidecar_reads(
        manifests: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    config = load_config(str(mounted_config(manifests, tmp_path)))
    assert (config.listen.host, config.admin.host) == ("0.0.0.0", "0.0.0.0")
    names = {e["name"] for e in sidecar(manifests)["env"]}
    assert config.admin.token_env in names  # a listener off loopback has its token


def test_ports_are_the_configs_and_the_gateways_defaults(
        manifests: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    config = load_config(str(mounted_config(manifests, tmp_path)))
    declared = ports(sidecar(manifests))
    assert declared == {"http": config.listen.port, "admin": config.admin.port}
    assert declared == {"http": Listen().port, "admin": Admin().port}
    template = manifests["Deployment/my-service"]["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(Admin().port)
    service = manifests["Service/my-service"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    assert service["spec"]["selector"] == template["metadata"]["labels"]


def test_probes_ask_paths_the_admin_listener_serves(manifests: dict[str, dict[str, Any]]
                                                    ) -> None:
    app = build_admin_app(None)  # type: ignore[arg-type]  # routes only: nothing is served
    served = {resource.canonical for resource in app.router.resources()}
    container = sidecar(manifests)
    probes = {kind: container[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert probe["path"] in served
        assert probe["port"] == "admin"
    template = manifests["Deployment/my-service"]["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/path"] in served


def test_hpa_scales_the_deployment_on_a_metric_the_gateway_exports(
        manifests: dict[str, dict[str, Any]]) -> None:
    hpa = manifests["HorizontalPodAutoscaler/my-service"]
    target = hpa["spec"]["scaleTargetRef"]
    assert f"{target['kind']}/{target['name']}" in manifests
    exported = {family.name for family in metrics.INFLIGHT.describe()}
    pods = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods and set(pods) <= exported


def test_the_image_serves_a_config_that_listens_on_every_interface(
        manifests: dict[str, dict[str, Any]]) -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    copied = re.search(r"^COPY (\S+) /etc/gateway/gateway\.yaml$", dockerfile, re.M)
    assert copied is not None
    config = load_config(str(REPO / copied.group(1)))
    assert (config.listen.host, config.admin.host) == ("0.0.0.0", "0.0.0.0")
    entry = re.search(r"^ENTRYPOINT (.+)$", dockerfile, re.M)
    assert entry is not None and json.loads(entry.group(1)) == ["gateway", "run"]
    assert sidecar(manifests)["args"][0] == "--config"  # appended to `gateway run`
