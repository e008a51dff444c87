"""The Kubernetes manifests: every overlay renders, validates strictly, and hangs together.

``kubectl kustomize`` renders the base and each overlay (skipped, with the reason, where
kubectl is missing); ``kubernetes-validate --strict`` checks every rendered object against
the Kubernetes schemas it ships. Then the objects are checked against each other and
against ambrosia itself: the deployment file in each ConfigMap is one ``ambrosia`` reads,
every instance it names has a StatefulSet and a headless Service whose pod name is its
address (in the cloud overlays: two pods, a primary and a hot standby, and a Service of
the ready pod, the primary, at that address), probes hit the health endpoint's paths
and port, and the pods run as the Dockerfile's non-root user with a read-only root
filesystem.
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
# Overlays with their logs on shared cloud storage run a hot standby per immortal.
STANDBY_OVERLAYS = ["overlays/azure", "overlays/aws"]
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
    standbys = overlay in STANDBY_OVERLAYS
    assert set(sets) == set(deployment.instances) == set(budgets)
    primaries = {f"{name}-primary" for name in deployment.instances} if standbys else set()
    assert set(services) == set(deployment.instances) | primaries
    namespace = objects[0]["metadata"]["name"]
    for name, instance in deployment.instances.items():
        statefulset, service = sets[name], services[name]
        if standbys:
            assert instance.address == f"{name}-primary.{namespace}.svc.cluster.local:7001"
        else:
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


def test_cloud_overlays_run_a_primary_and_a_hot_standby(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    """Two pods per immortal on shared storage; peers dial the ready one, the primary."""
    overlay, objects = rendered
    sets, services, budgets = (
        _of(objects, kind) for kind in ("StatefulSet", "Service", "PodDisruptionBudget")
    )
    if overlay not in STANDBY_OVERLAYS:
        # A file:// log on each pod's own volume cannot be shared with a standby.
        assert all(item["spec"]["replicas"] == 1 for item in sets.values())
        assert not any("hostAliases" in s["spec"]["template"]["spec"] for s in sets.values())
        return
    (config,) = [
        item
        for name, item in _of(objects, "ConfigMap").items()
        if name.startswith("ambrosia-config")
    ]
    deployment = parse_deployment(config["data"]["ambrosia.toml"], Path("ambrosia.toml"))
    assert deployment.log_url is not None and not deployment.log_url.startswith("file:")
    for name, instance in deployment.instances.items():
        statefulset = sets[name]
        assert statefulset["spec"]["replicas"] == 2
        assert statefulset["spec"]["updateStrategy"] == {"type": "OnDelete"}
        pod = statefulset["spec"]["template"]
        labels = pod["metadata"]["labels"]
        host, _, port = instance.address.rpartition(":")
        # The pod listens on every interface under the address its peers dial.
        assert pod["spec"]["hostAliases"] == [{"ip": "0.0.0.0", "hostnames": [host]}]
        # Peers dial a cluster IP whose endpoints are the ready pod: the primary.
        service = services[host.split(".")[0]]
        assert service["metadata"]["namespace"] == host.split(".")[1]
        assert service["spec"].get("clusterIP") != "None"
        assert not service["spec"].get("publishNotReadyAddresses", False)
        assert service["spec"]["selector"].items() <= labels.items()
        (peer,) = service["spec"]["ports"]
        assert (peer["port"], peer["targetPort"]) == (int(port), "peer")
        container = pod["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        terms = pod["spec"]["affinity"]["podAntiAffinity"][
            "preferredDuringSchedulingIgnoredDuringExecution"
        ]
        assert terms[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == {
            "app.kubernetes.io/name": name
        }
        budget = budgets[name]["spec"]
        assert budget["maxUnavailable"] == 1
        assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


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


def _http(port: int, path: str) -> tuple[int, str]:
    """(status, body) of GET ``path`` on a local health endpoint; (0, error) if it is down."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


@pytest.mark.crash
@pytest.mark.emulator
def test_the_aws_overlay_fails_over_to_its_standby_pod(tmp_path: Path, dynamodb_env: Any) -> None:
    """The AWS overlay's pods as local processes on a moto server: two server pods, one
    SIGKILLed, and the client served by the standby that took over.

    As in the test above, only what the cluster provides is mapped: the instance's
    address (the pod's hostAliases and the NAME-primary Service) to one loopback port,
    each pod's health port to a port of its own, the volumes to directories, and the
    overlay's example table and bucket to fresh ones on the moto server (made here, as
    Terraform makes them). The log's lease is 2 s instead of the store's default, so
    the standby takes over within seconds of the kill.
    """
    import json
    import os
    import signal
    import sys
    import time
    import uuid

    import anyio
    import boto3

    from ambrosia.catalog import open_catalog
    from ambrosia.certs import create_ca, issue_instance_certificate
    from ambrosia.testing.emulators import free_loopback_ports

    objects = render("overlays/aws")
    (config,) = [
        item
        for name, item in _of(objects, "ConfigMap").items()
        if name.startswith("ambrosia-config")
    ]
    (environment_map,) = [
        item
        for name, item in _of(objects, "ConfigMap").items()
        if name.startswith("ambrosia-environment")
    ]
    text = config["data"]["ambrosia.toml"]
    sets = _of(objects, "StatefulSet")
    assert sets["server"]["spec"]["replicas"] == 2
    table = f"ambrosia-k8s-{uuid.uuid4().hex[:8]}"
    bucket = f"ambrosia-k8s-{uuid.uuid4().hex[:8]}"
    deployment = parse_deployment(text, Path("ambrosia.toml"))
    assert deployment.catalog_url is not None and deployment.log_url is not None
    text = text.replace(deployment.catalog_url, f"dynamodb://{table}?region=us-east-1")
    text = text.replace(deployment.log_url, f"s3://{bucket}/prod")
    text = text.replace("[store]\n", "[store]\nlease_duration_s = 2\n", 1)
    ports = dict(zip(sets, free_loopback_ports(len(sets)), strict=True))
    tls = tmp_path / "tls"
    authority = create_ca(tls)
    for name, instance in deployment.instances.items():
        issue_instance_certificate(authority, tls, name)
        text = text.replace(instance.address, f"127.0.0.1:{ports[name]}")
    text = text.replace("/etc/ambrosia/tls", str(tls))
    assert ".svc.cluster.local:" not in text

    async def create_table() -> None:
        catalog = await open_catalog(f"dynamodb://{table}?region=us-east-1", create=True)
        await catalog.close()

    anyio.run(create_table)
    boto3.client(
        "s3", endpoint_url=dynamodb_env.endpoint_url, region_name="us-east-1"
    ).create_bucket(Bucket=bucket)

    pods = ("server-0", "server-1", "client-0")
    health = dict(zip(pods, free_loopback_ports(len(pods)), strict=True))
    processes: dict[str, subprocess.Popen[str]] = {}

    def start(pod_name: str) -> subprocess.Popen[str]:
        name = pod_name.rsplit("-", 1)[0]
        container = sets[name]["spec"]["template"]["spec"]["containers"][0]
        pod_text = text.replace("0.0.0.0:9102", f"127.0.0.1:{health[pod_name]}")
        pod_text = pod_text.replace("/var/lib/ambrosia", str(tmp_path / pod_name))
        config_path = tmp_path / f"{pod_name}.toml"
        config_path.write_text(pod_text)
        environment = {item["name"]: item["value"] for item in container["env"]}
        environment["AMBROSIA_CONFIG"] = str(config_path)
        env = {
            **os.environ,
            **environment_map["data"],
            **environment,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(KUBERNETES_ROOT.parents[1]),
        }
        env.pop("AMBROSIA_CATALOG", None)
        process = subprocess.Popen(
            [*container["command"], *container["args"]],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE if name == "client" else subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        processes[pod_name] = process
        return process

    def wait_until(what: str, condition: Any, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            for pod_name, process in processes.items():
                killed = pod_name == "server-0" and process.returncode == -signal.SIGKILL
                assert killed or process.poll() is None, f"{pod_name} ended: {process.poll()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.2)

    def status(pod_name: str) -> dict[str, Any]:
        code, body = _http(health[pod_name], "/status")
        return json.loads(body) if code == 200 else {}

    try:
        start("server-0")
        wait_until("server-0 ready", lambda: _http(health["server-0"], "/readyz")[0] == 200)
        start("server-1")
        wait_until("server-1 a standby", lambda: status("server-1").get("role") == "standby")
        # Alive (liveness passes) and not ready: the Service does not send peers to it.
        assert _http(health["server-1"], "/healthz")[0] == 200
        assert _http(health["server-1"], "/readyz")[0] == 503
        epoch = status("server-0")["epoch"]
        processes["server-0"].send_signal(signal.SIGKILL)
        processes["server-0"].wait(timeout=30)
        wait_until("server-1 ready", lambda: _http(health["server-1"], "/readyz")[0] == 200)
        taken_over = status("server-1")
        assert taken_over["role"] == "primary" and taken_over["lease_held"] is True
        assert taken_over["epoch"] > epoch
        client = start("client-0")
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
    finally:
        for process in processes.values():
            process.kill()
            process.wait(timeout=30)
            if process.stdout is not None:
                process.stdout.close()
