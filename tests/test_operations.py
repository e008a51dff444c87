"""The health endpoint, /metrics and JSON logs of a running ``ambrosia run`` process.

Real processes on loopback with a file log: a primary answers ``/readyz`` 200 with its
lease and epoch; a second process for the same instance waits as a standby (alive, not
ready); killing the primary with SIGKILL makes the standby take the lease with a higher
epoch and turn ready. ``/metrics`` serves the coordinator's instruments after real calls.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ambrosia.errors import ConfigError
from ambrosia.operations import JsonFormatter, parse_operations
from ambrosia.testing.emulators import free_loopback_ports

APP = "ambrosia.testing.workloads:ChainServer"
LIVENESS_S = 60.0


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _status(port: int) -> dict[str, Any] | None:
    try:
        code, body = _get(port, "/status")
    except OSError:
        return None
    return json.loads(body) if code == 200 else None


def _wait_for(port: int, role: str, process: subprocess.Popen[str]) -> dict[str, Any]:
    deadline = time.monotonic() + LIVENESS_S
    while time.monotonic() < deadline:
        status = _status(port)
        if status is not None and status["role"] == role:
            return status
        if process.poll() is not None:
            raise AssertionError(f"process exited {process.returncode}: {process.stdout.read()}")  # type: ignore[union-attr]
        time.sleep(0.1)
    raise AssertionError(f"no {role} on port {port} within {LIVENESS_S} s: {_status(port)}")


def _samples(text: str) -> dict[str, float]:
    """Sample name -> value for the instance ``server`` (summed over other labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("instance") == "server" and "le" not in sample.labels:
                found[sample.name] = found.get(sample.name, 0.0) + sample.value
    return found


class Deployment:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.processes: list[subprocess.Popen[str]] = []
        self.env = {**os.environ, "AMBROSIA_STATUS_DIR": str(directory / "status")}
        self.env.pop("AMBROSIA_CONFIG", None)
        self.env.pop("AMBROSIA_CATALOG", None)

    def write(self, health_port: int, address: str) -> Path:
        path = self.directory / f"ambrosia-{health_port}.toml"
        path.write_text(
            f'catalog = "sqlite://{self.directory / "catalog.db"}"\n'
            f'log = "file://{self.directory / "logs"}"\n'
            "[coordinator]\nlease_wait_s = 120\n"
            "[tls]\nplaintext = true\n"
            f'[operations]\nhealth_address = "127.0.0.1:{health_port}"\n'
            'metrics = true\nlog_format = "json"\n'
            f'[instances.server]\naddress = "{address}"\napp = "{APP}"\n'
        )
        return path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ambrosia.cli", *args],
            env=self.env,
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def start(self, config: Path) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "ambrosia.cli", "--config", str(config), "run", "server"],
            env=self.env,
            cwd=self.directory,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
            if process.stdout is not None:
                process.stdout.close()


@pytest.fixture
def deployment(tmp_path: Path) -> Any:
    found = Deployment(tmp_path)
    yield found
    found.close()


@pytest.mark.crash
def test_primary_then_standby_then_failover(deployment: Deployment) -> None:
    peer_port, first_health, second_health = free_loopback_ports(3)
    address = f"127.0.0.1:{peer_port}"
    first_config = deployment.write(first_health, address)
    second_config = deployment.write(second_health, address)
    registered = deployment.cli("--config", str(first_config), "register", "server")
    assert registered.returncode == 0, registered.stderr

    primary = deployment.start(first_config)
    status = _wait_for(first_health, "primary", primary)
    assert status["up"] is True and status["lease_held"] is True
    assert status["instance"] == "server" and status["epoch"] >= 1
    assert _get(first_health, "/healthz")[0] == 200
    assert _get(first_health, "/readyz")[0] == 200
    assert _get(first_health, "/nothing")[0] == 404

    # The second process waits for the lease: alive, not ready, holding nothing.
    standby = deployment.start(second_config)
    waiting = _wait_for(second_health, "standby", standby)
    assert waiting["lease_held"] is False and waiting["epoch"] is None
    assert _get(second_health, "/healthz")[0] == 200
    assert _get(second_health, "/readyz")[0] == 503

    samples = _samples(_get(first_health, "/metrics")[1].decode())
    assert samples["ambrosia_lease_held"] == 1.0
    assert samples["ambrosia_lease_epoch"] == status["epoch"]
    assert samples["ambrosia_primary"] == 1.0
    # Recovery wrote checkpoint 0, and the first-start call went through the log.
    assert samples["ambrosia_checkpoint_size_bytes_count"] >= 1
    assert samples["ambrosia_log_page_size_bytes_count"] >= 1
    assert samples["ambrosia_log_page_messages_sum"] >= 1
    assert samples["ambrosia_peer_calls_in_total"] >= 1

    primary.send_signal(signal.SIGKILL)
    primary.wait(timeout=30)
    taken = _wait_for(second_health, "primary", standby)
    assert taken["lease_held"] is True and taken["epoch"] > status["epoch"]
    assert _get(second_health, "/readyz")[0] == 200

    standby.send_signal(signal.SIGTERM)
    assert standby.wait(timeout=60) == 0
    assert standby.stdout is not None
    lines = [line for line in standby.stdout.read().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert any("lease taken" in record["message"] for record in records), lines


def test_operations_table_is_checked() -> None:
    settings = parse_operations({"health_address": "0.0.0.0:9102", "metrics": True}, "f: ")
    assert settings.health_address == ("0.0.0.0", 9102) and settings.metrics
    for table, fragment in [
        ({"health_address": "nowhere"}, "health_address"),
        ({"metrics": True}, "set it"),
        ({"metrics": "yes", "health_address": "a:1"}, "true or false"),
        ({"log_format": "xml"}, "log_format"),
        ({"helth_address": "a:1"}, "unknown key"),
    ]:
        with pytest.raises(ConfigError, match=fragment):
            parse_operations(table, "f: ")


def test_json_log_lines_are_objects() -> None:
    import logging

    record = logging.LogRecord("ambrosia.x", logging.INFO, __file__, 1, "a %s", ("b",), None)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "a b" and entry["level"] == "INFO"


def test_bad_requests_get_clear_answers(tmp_path: Path) -> None:
    """A runtime that has not started: a standby, alive; wrong requests are refused."""
    import asyncio

    from ambrosia.backends import open_store
    from ambrosia.binding.dispatcher import in_process
    from ambrosia.coordinator.runtime import Runtime
    from ambrosia.operations import HealthServer
    from ambrosia.testing.workloads import ChainServer

    async def exchange(port: int, request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            await writer.drain()
            return await reader.read()
        except ConnectionResetError:
            return b""  # closed with our request unread: refused
        finally:
            writer.close()

    async def main() -> None:
        store = await open_store(f"file://{tmp_path / 'log'}", "server")

        async def resolve(name: str) -> tuple[str, int]:
            raise AssertionError(name)

        runtime = Runtime(
            instance="server",
            binding=in_process(ChainServer),
            store=store,
            listen=("127.0.0.1", 0),
            resolve=resolve,
        )
        server = HealthServer(runtime, ("127.0.0.1", 0), metrics=False)
        await server.start()
        try:
            status = await exchange(server.port, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status.startswith(b"HTTP/1.1 200 ")
            body = json.loads(status.partition(b"\r\n\r\n")[2])
            assert body == {
                "instance": "server",
                "up": True,
                "role": "standby",
                "lease_held": False,
                "epoch": None,
                "failure": None,
            }
            ready = await exchange(server.port, b"GET /readyz HTTP/1.1\r\n\r\n")
            assert ready.startswith(b"HTTP/1.1 503 ")
            posted = await exchange(server.port, b"POST /healthz HTTP/1.1\r\n\r\n")
            assert posted.startswith(b"HTTP/1.1 405 ")
            # /metrics is not served unless asked for.
            metrics = await exchange(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
            assert metrics.startswith(b"HTTP/1.1 404 ")
            # A request head beyond the limit is cut off, and the server keeps serving.
            huge = b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n"
            assert not (await exchange(server.port, huge)).startswith(b"HTTP/1.1 200")
            again = await exchange(server.port, b"GET /healthz HTTP/1.1\r\n\r\n")
            assert again.startswith(b"HTTP/1.1 200 ")
        finally:
            await server.close()
            await store.close()

    asyncio.run(main())
