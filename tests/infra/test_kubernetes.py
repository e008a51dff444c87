"""The Kubernetes manifests: every overlay renders, validates strictly, and hangs together.

``kubectl kustomize`` renders the base and each overlay (skipped, with the reason, where
kubectl is missing); ``kubernetes-validate --strict`` checks every rendered object against
the Kubernetes schemas it ships. Then the objects are checked against each other and
against ambrosia itself: the deployment file in each ConfigMap is one ``ambrosia`` reads,
every instance it names has a StatefulSet and a headless Service whose pod name is its
address, probes hit the health endpoint's paths and port, and the pods run as the
Dockerfile's non-root user with a read-only root filesystem.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ambrosia.catalog import check_catalog_url
from ambrosia.deployment import parse_deployment
from tests.infra.tools import KUBERNETES_ROOT, kubectl_binary

OVERLAYS = ["base", "overlays/azure", "overlays/aws"]
KUBERNETES_VERSION = "1.32.0"


def render(overlay: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [kubectl_binary(), "kustomize", str(KUBERNETES_ROOT / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return [document for document in yaml.safe_load_all(done.stdout) if document]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def _of(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {item["metadata"]["name"]: item for item in objects if item["kind"] == kind}


def test_kubernetes_validate_strict(
    rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    import kubernetes_validate

    overlay, objects = rendered
    for item in objects:
        try:
            kubernetes_validate.validate(item, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            raise AssertionError(
                f"{overlay}: {item['kind']} {item['metadata']['name']}: {error.message}"
            ) from None


def test_every_instance_has_a_statefulset_service_and_budget(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    overlay, objects = rendered
    config_maps = _of(objects, "ConfigMap")
    (config,) = [item for name, item in config_maps.items() if name.startswith("ambrosia-config")]
    deployment = parse_deployment(config["data"]["ambrosia.toml"], Path(f"{overlay}/ambrosia.toml"))
    assert deployment.operations.health_address == ("0.0.0.0", 9102)
    assert deployment.operations.metrics
    sets, services, budgets = (
        _of(objects, kind) for kind in ("StatefulSet", "Service", "PodDisruptionBudget")
    )
    assert set(sets) == set(deployment.instances) == set(services) == set(budgets)
    namespace = objects[0]["metadata"]["name"]
    for name, instance in deployment.instances.items():
        statefulset, service = sets[name], services[name]
        assert instance.address == f"{name}-0.{name}.{namespace}.svc.cluster.local:7001"
        assert statefulset["metadata"]["namespace"] == namespace
        assert statefulset["spec"]["serviceName"] == name
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["publishNotReadyAddresses"] is True
        pod = statefulset["spec"]["template"]
        container = pod["spec"]["containers"][0]
        environment = {item["name"]: item.get("value") for item in container["env"]}
        assert environment["AMBROSIA_INSTANCE"] == name
        assert set(environment["AMBROSIA_INSTANCES"].split()) == set(deployment.instances)
        assert environment["AMBROSIA_CONFIG"].startswith("/etc/ambrosia/config/")
        secret = next(v for v in pod["spec"]["volumes"] if v["name"] == "tls")["secret"]
        assert secret["secretName"] == f"ambrosia-tls-{name}"
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9102"
        assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"


def test_pods_are_locked_down_and_probed(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, objects = rendered
    for name, statefulset in _of(objects, "StatefulSet").items():
        pod = statefulset["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["automountServiceAccountToken"] is False
        assert pod["serviceAccountName"] == "ambrosia"
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            for resource in ("cpu", "memory"):
                assert container["resources"]["requests"][resource]
                assert container["resources"]["limits"][resource]
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["port"] == "health"
            ports = {port["name"]: port["containerPort"] for port in container["ports"]}
            assert ports == {"peer": 7001, "health": 9102}
            # Credentials come from workload identity: no Secret in the environment.
            for item in container.get("env", []):
                assert "valueFrom" not in item, (overlay, name, item)


def test_cloud_overlays_sign_in_with_workload_identity() -> None:
    azure = render("overlays/azure")
    account = _of(azure, "ServiceAccount")["ambrosia"]
    client_id = account["metadata"]["annotations"]["azure.workload.identity/client-id"]
    environment = next(
        item
        for name, item in _of(azure, "ConfigMap").items()
        if name.startswith("ambrosia-environment")
    )["data"]
    assert client_id == environment["AZURE_CLIENT_ID"]
    assert {"AZURE_STORAGE_ACCOUNT_URL", "AZURE_TABLES_ACCOUNT_URL"} <= set(environment)
    for statefulset in _of(azure, "StatefulSet").values():
        labels = statefulset["spec"]["template"]["metadata"]["labels"]
        assert labels["azure.workload.identity/use"] == "true"
    aws = render("overlays/aws")
    environment = next(
        item
        for name, item in _of(aws, "ConfigMap").items()
        if name.startswith("ambrosia-environment")
    )["data"]
    assert "AWS_REGION" in environment
    for overlay, scheme, catalog in (
        ("overlays/azure", "azblob://", "aztable://"),
        ("overlays/aws", "s3://", "dynamodb://"),
    ):
        (config,) = [
            item
            for name, item in _of(render(overlay), "ConfigMap").items()
            if name.startswith("ambrosia-config")
        ]
        text = config["data"]["ambrosia.toml"]
        assert f'log = "{scheme}' in text
        assert f'catalog = "{catalog}' in text
        # The catalog URL is one ambrosia accepts (checked without IO).
        check_catalog_url(parse_deployment(text, Path("ambrosia.toml")).catalog_url or "")


@pytest.mark.crash
def test_the_pods_start_command_runs_the_counter(tmp_path: Path) -> None:
    """The base's pods as local processes: their command, environment and deployment file.

    The rendered StatefulSets' command and environment run unchanged; only what a cluster
    provides is mapped to this machine: each pod's DNS name to a loopback port, its
    volumes (config, TLS Secret, data) to directories. The client prints 1 and 2, and the
    server answers ``/readyz`` as the readiness probe would see it.
    """
    import os
    import sys
    import time
    import urllib.request

    from ambrosia.certs import create_ca, issue_instance_certificate
    from ambrosia.testing.emulators import free_loopback_ports

    objects = render("base")
    (config,) = [item for name, item in _of(objects, "ConfigMap").items()]
    text = config["data"]["ambrosia.toml"]
    sets = _of(objects, "StatefulSet")
    ports = dict(zip(sets, free_loopback_ports(len(sets)), strict=True))
    health_ports = dict(zip(sets, free_loopback_ports(len(sets)), strict=True))
    tls = tmp_path / "tls"
    authority = create_ca(tls)
    for name in sets:
        issue_instance_certificate(authority, tls, name)
        text = text.replace(
            f"{name}-0.{name}.ambrosia.svc.cluster.local:7001", f"127.0.0.1:{ports[name]}"
        )
    text = text.replace("/var/lib/ambrosia", str(tmp_path / "data"))
    text = text.replace("/etc/ambrosia/tls", str(tls))
    assert ".svc.cluster.local:" not in text
    processes: dict[str, subprocess.Popen[str]] = {}
    try:
        for name in ("server", "client"):
            pod = sets[name]["spec"]["template"]["spec"]["containers"][0]
            pod_text = text.replace("0.0.0.0:9102", f"127.0.0.1:{health_ports[name]}")
            config_path = tmp_path / f"{name}.toml"
            config_path.write_text(pod_text)
            environment = {item["name"]: item["value"] for item in pod["env"]}
            environment["AMBROSIA_CONFIG"] = str(config_path)
            env = {
                **os.environ,
                **environment,
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                "PYTHONPATH": str(KUBERNETES_ROOT.parents[1]),
            }
            env.pop("AMBROSIA_CATALOG", None)
            processes[name] = subprocess.Popen(
                [*pod["command"], *pod["args"]],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        client = processes["client"]
        assert client.stdout is not None
        printed: list[str] = []
        deadline = time.monotonic() + 60
        while len(printed) < 2 and time.monotonic() < deadline:
            line = client.stdout.readline()
            if not line:
                break
            if line.strip().isdigit():
                printed.append(line.strip())
        assert printed == ["1", "2"], (printed, client.poll())
        url = f"http://127.0.0.1:{health_ports['server']}/readyz"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
    finally:
        for process in processes.values():
            process.kill()
            process.wait(timeout=30)
            if process.stdout is not None:
                process.stdout.close()
