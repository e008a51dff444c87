"""The Restate row of ``ambrosia-bench peers``: a virtual object ``Counter``.

Three processes, all started and stopped here:

- the Restate server, from the npm package ``@restatedev/restate-server`` (it carries
  the server's binary), installed on first use into ``.peers/restate`` of this checkout
  (as ``scripts/setup.sh`` installs the emulators into ``node_modules``), run with its
  default configuration, a base directory of the run's own, telemetry off and every port
  on 127.0.0.1;
- the service: the Python SDK's (``restate-sdk``) virtual object ``Counter``
  (``ambrosia.bench.peers_restate_service``) with one exclusive handler ``add`` (reads the
  state ``count``, sets it one higher, returns it), served by hypercorn and registered
  with the server's admin API for HTTP/1.1 (request-response). Over HTTP/2, hypercorn's
  streams broke now and then under load here ("stream closed because of a broken pipe"),
  and each broken invocation held the counter's key for ~30 s of retries;
- a client process per mode calling ``POST /Counter/<mode>/add`` on the server's HTTP
  ingress (aiohttp, one connection per call in flight). A call returns once the server
  has the handler's result, which its log holds first.

The durability reported is read from the server's own configuration dump
(``restate-server --dump-config`` under the run's settings).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from ambrosia.bench.children import child_process
from ambrosia.bench.peers import (
    PAYLOAD,
    Measurement,
    ModeSpec,
    PeerUnavailable,
    client_arguments,
    client_timeout_s,
    drive,
    measurement_document,
    read_measurement,
    spec_arguments,
)

__all__ = ["RESTATE_SERVER_VERSION", "restate_durability", "run"]

RESTATE_SERVER_VERSION = "1.7.12"
_INSTALL_DIR = Path(__file__).resolve().parents[2] / ".peers" / "restate"
_START_TIMEOUT_S = 90.0
_STOP_TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _server_binary() -> Path:
    """The restate-server command, installed from npm into ``.peers/restate`` if needed."""
    binary = _INSTALL_DIR / "node_modules" / ".bin" / "restate-server"
    manifest = _INSTALL_DIR / "package.json"
    wanted = {
        "private": True,
        "description": "The Restate server, for ambrosia-bench peers.",
        "dependencies": {"@restatedev/restate-server": RESTATE_SERVER_VERSION},
    }
    if binary.exists() and manifest.exists() and orjson.loads(manifest.read_bytes()) == wanted:
        return binary
    npm = shutil.which("npm")
    if npm is None:
        raise PeerUnavailable("npm is not installed, so the Restate server cannot be")
    _INSTALL_DIR.mkdir(parents=True, exist_ok=True)
    manifest.write_bytes(orjson.dumps(wanted, option=orjson.OPT_INDENT_2))
    try:
        completed = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent"],
            cwd=_INSTALL_DIR,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired:
        raise PeerUnavailable("npm install of the Restate server took over 600 s") from None
    if completed.returncode != 0 or not binary.exists():
        raise PeerUnavailable(
            f"npm install @restatedev/restate-server@{RESTATE_SERVER_VERSION} failed: "
            f"{(completed.stderr or completed.stdout).strip()[-1000:]}"
        )
    return binary


def restate_durability(config: str) -> str:
    """What a ``restate-server --dump-config`` says about where its log is made durable.

    ``ValueError`` if the dump lacks the keys read: the default log provider
    (``[bifrost] default-provider``) and, for that provider, whether its RocksDB write-ahead
    log is fsync'd (``rocksdb-disable-wal-fsync`` of ``[log-server]`` for the replicated
    provider, of ``[bifrost.local]`` for the local one).
    """
    sections: dict[str, dict[str, str]] = {}
    section = ""
    for raw in config.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        key, equals, value = line.partition("=")
        if equals and not line.startswith("#"):
            sections.setdefault(section, {})[key.strip()] = value.strip().strip('"')
    try:
        provider = sections["bifrost"]["default-provider"]
    except KeyError:
        raise ValueError("the Restate configuration has no [bifrost] default-provider") from None
    store = "log-server" if provider == "replicated" else "bifrost.local"
    disabled = sections.get(store, {}).get("rocksdb-disable-wal-fsync")
    if disabled not in ("true", "false"):
        raise ValueError(f"the Restate configuration has no [{store}] rocksdb-disable-wal-fsync")
    replication = sections.get("", {}).get("default-replication", "?")
    return (
        f"Restate server log: provider {provider} (replication {replication}), "
        f"[{store}] RocksDB WAL fsync {'off' if disabled == 'true' else 'on'} "
        "(the server's defaults); service called over HTTP/1.1"
    )


class _Process:
    """A non-Python process of the run, output to a file, stopped by its process id."""

    def __init__(self, command: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = log
        self._file = log.open("wb")
        self.process = subprocess.Popen(
            command,
            stdout=self._file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )

    def check(self, what: str) -> None:
        if self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-1500:]
            raise PeerUnavailable(f"{what} exited with {self.process.returncode}: {tail}")

    def stop(self) -> None:
        """SIGTERM, SIGKILL after a grace period; then its process group (the session
        it leads: hypercorn's worker processes) is SIGKILLed too."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._file.close()


def _http(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url,
        data=orjson.dumps(body) if body is not None else None,
        method=method,
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _wait_for(description: str, probe: Any, process: _Process, name: str) -> Any:
    deadline = time.monotonic() + _START_TIMEOUT_S
    last: object = None
    while time.monotonic() < deadline:
        process.check(name)
        try:
            result = probe()
            if result:
                return result
        except OSError as error:
            last = error
        time.sleep(0.2)
    raise PeerUnavailable(f"{description} not ready within {_START_TIMEOUT_S:.0f} s ({last})")


def run(system: str, modes: Sequence[ModeSpec], workdir: Path) -> tuple[str, list[Measurement]]:
    for module in ("restate", "hypercorn", "aiohttp"):
        if importlib.util.find_spec(module) is None:
            raise PeerUnavailable(
                f"the Python package {module} is not installed (pip install -e '.[peers]')"
            )
    binary = _server_binary()
    node, admin, ingress, service = (_free_port() for _ in range(4))
    env = {
        "RESTATE_DISABLE_TELEMETRY": "true",
        "RESTATE_LISTEN_MODE": "tcp",
        "RESTATE_BIND_ADDRESS": f"127.0.0.1:{node}",
        "RESTATE_ADVERTISED_ADDRESS": f"http://127.0.0.1:{node}",
        "RESTATE_ADMIN__BIND_ADDRESS": f"127.0.0.1:{admin}",
        "RESTATE_INGRESS__BIND_ADDRESS": f"127.0.0.1:{ingress}",
        "RESTATE_NODE_NAME": "ambrosia-peers",
    }
    dump = subprocess.run(
        [str(binary), "--dump-config", "--base-dir", str(workdir / "restate")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    try:
        durability = restate_durability(dump.stdout)
    except ValueError as error:
        raise PeerUnavailable(
            f"{error} (restate-server --dump-config: {dump.stderr[-500:]})"
        ) from None
    server = _Process(
        [str(binary), "--base-dir", str(workdir / "restate"), "--no-logo"],
        workdir / "restate-server.log",
        env,
    )
    service_process: _Process | None = None
    try:
        _wait_for(
            "the Restate server",
            lambda: _http("GET", f"http://127.0.0.1:{admin}/health")[0] == 200,
            server,
            "the Restate server",
        )
        package_root = str(Path(__file__).resolve().parents[2])
        # No limit on a connection's requests, streams or idle time: hypercorn's defaults
        # close a connection after 1,000 requests, failing the invocations on it.
        (workdir / "hypercorn.toml").write_text(
            f'bind = "127.0.0.1:{service}"\n'
            "h2_max_concurrent_streams = 2147483647\n"
            "keep_alive_max_requests = 2147483647\n"
            "keep_alive_timeout = 2147483647\n"
        )
        service_process = _Process(
            [
                sys.executable,
                "-m",
                "hypercorn",
                "--config",
                str(workdir / "hypercorn.toml"),
                "ambrosia.bench.peers_restate_service:app",
            ],
            workdir / "restate-service.log",
            {
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [package_root, os.environ.get("PYTHONPATH")])
                )
            },
        )

        def register() -> bool:
            status, body = _http(
                "POST",
                f"http://127.0.0.1:{admin}/deployments",
                {"uri": f"http://127.0.0.1:{service}", "use_http_11": True},
            )
            if status >= 300:
                raise OSError(f"registration answered {status}: {body[:300]!r}")
            return True

        _wait_for("the Counter service's registration", register, service_process, "hypercorn")
        measurements = []
        for spec in modes:
            with child_process(
                "ambrosia.bench.peers_restate",
                [
                    "client",
                    "--ingress",
                    f"http://127.0.0.1:{ingress}",
                    "--key",
                    spec.mode,
                    *spec_arguments(spec),
                ],
                label=f"restate {spec.mode} client",
            ) as client:
                measurements.append(read_measurement(client, client_timeout_s(spec)))
                client.wait_ok(30)
        return durability, measurements
    finally:
        if service_process is not None:
            service_process.stop()
        server.stop()


# -- the service and the client ---------------------------------------------------------------


async def _client(options: argparse.Namespace) -> Measurement:
    import aiohttp

    url = f"{options.ingress}/Counter/{options.key}/add"
    connector = aiohttp.TCPConnector(limit=options.in_flight)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def call(payload: bytes) -> int:
            async with session.post(
                url,
                data=orjson.dumps(payload.decode()),
                headers={"content-type": "application/json"},
            ) as response:
                body = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"Restate answered {response.status}: {body[:300]!r}")
                return int(orjson.loads(body))

        return await drive(
            call,
            calls=options.calls,
            warmup=options.warmup,
            in_flight=options.in_flight,
            max_seconds=options.max_seconds,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ambrosia.bench.peers_restate")
    commands = parser.add_subparsers(dest="command", required=True)
    client = commands.add_parser("client")
    client.add_argument("--ingress", required=True)
    client.add_argument("--key", required=True)
    client_arguments(client)
    options = parser.parse_args(argv)
    assert len(PAYLOAD) == 16
    print(measurement_document(asyncio.run(_client(options))).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
