"""Start and stop the storage emulators as real processes on free loopback ports.

- Azurite (Azure Blob and Table storage; npm package ``azurite``, pinned in the
  repository's ``package.json``): ``node_modules/.bin/azurite`` with in-memory
  persistence. Blob and Table get their own ports (Queue too, since the all-in-one
  command always starts it). Azurite enforces leases, append-position conditions and
  etag conditions the way Azure does, which is what the backends' fencing relies on.
- moto in server mode (``moto[server]``) for S3, run as ``python -m moto.server``.
  moto's in-process decorator patches botocore's synchronous HTTP stack and does not see
  aiobotocore's aiohttp requests, so the server is the only faithful option.

Each emulator runs in its own session (process group) so that stopping it by its PID
also stops anything it spawned, and nothing else. Ports come from binding port 0 on
127.0.0.1 and releasing it just before the start; readiness is a successful TCP connect
to every port. ``EmulatorUnavailableError`` (a ``ConfigError``) says what is missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ambrosia.errors import ConfigError

__all__ = [
    "AZURITE_ACCOUNT_KEY",
    "AZURITE_ACCOUNT_NAME",
    "Azurite",
    "EmulatorProcess",
    "EmulatorUnavailableError",
    "MotoServer",
    "find_repository_root",
    "free_loopback_ports",
    "start_azurite",
    "start_moto_server",
    "start_or_skip",
]

_Emulator = TypeVar("_Emulator")

# Azurite's development account: public, documented, accepted only by the emulator.
AZURITE_ACCOUNT_NAME = "devstoreaccount1"
AZURITE_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

startup_timeout_s_default = 20.0
stop_timeout_s = 5.0
_poll_interval_s = 0.02
_log_tail_bytes_max = 4000


class EmulatorUnavailableError(ConfigError):
    """The emulator is not installed or did not start."""


def find_repository_root(start: Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: this file) with package.json."""
    here = (start or Path(__file__)).resolve()
    for directory in (here, *here.parents):
        if (directory / "package.json").is_file():
            return directory
    raise EmulatorUnavailableError(f"no package.json found above {here}")


def free_loopback_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free on 127.0.0.1 a moment ago."""
    with ExitStack() as stack:
        sockets = []
        for _ in range(count):
            listener = stack.enter_context(closing(socket.socket()))
            listener.bind(("127.0.0.1", 0))
            sockets.append(listener)
        return [listener.getsockname()[1] for listener in sockets]


def _port_open(port: int) -> bool:
    with closing(socket.socket()) as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


class EmulatorProcess:
    """A started emulator: its PID, its log file, and ``stop()``."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self._process = process
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self._process.pid

    def running(self) -> bool:
        return self._process.poll() is None

    def log_tail(self) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-_log_tail_bytes_max:].decode("utf-8", errors="replace")

    def wait_ready(self, ports: list[int], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = list(ports)
        while pending:
            if not self.running():
                error = EmulatorUnavailableError(
                    f"{self.name} exited with code {self._process.returncode} before "
                    f"listening:\n{self.log_tail()}"
                )
                self.stop()
                raise error
            pending = [port for port in pending if not _port_open(port)]
            if pending and time.monotonic() > deadline:
                error = EmulatorUnavailableError(
                    f"{self.name} did not listen on {pending} within {timeout_s} s:\n"
                    f"{self.log_tail()}"
                )
                self.stop()
                raise error
            if pending:
                time.sleep(_poll_interval_s)

    def stop(self) -> None:
        """SIGTERM the emulator's process group (its PID), then SIGKILL if it lingers;
        then remove its working directory (its log included: an error raised while it
        ran has already quoted the log's tail)."""
        try:
            self._terminate()
        finally:
            shutil.rmtree(self.log_path.parent, ignore_errors=True)

    def _terminate(self) -> None:
        if self._process.poll() is not None:
            return
        # start_new_session made the PID the group id: this reaches only our processes.
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self._process.wait(timeout=stop_timeout_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            self._process.wait(timeout=stop_timeout_s)


def _spawn(name: str, command: list[str], working_directory: Path) -> EmulatorProcess:
    log_path = working_directory / f"{name}.log"
    try:
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                cwd=working_directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    except BaseException:
        shutil.rmtree(working_directory, ignore_errors=True)
        raise
    return EmulatorProcess(name, process, log_path)


@dataclass(frozen=True, slots=True)
class Azurite:
    """A running Azurite: endpoints, the emulator account's connection string, the process."""

    process: EmulatorProcess
    blob_port: int
    table_port: int
    queue_port: int

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.blob_port}/{AZURITE_ACCOUNT_NAME}"

    @property
    def table_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.table_port}/{AZURITE_ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        return (
            "DefaultEndpointsProtocol=http;"
            f"AccountName={AZURITE_ACCOUNT_NAME};AccountKey={AZURITE_ACCOUNT_KEY};"
            f"BlobEndpoint={self.blob_endpoint};TableEndpoint={self.table_endpoint};"
        )

    def stop(self) -> None:
        self.process.stop()


@dataclass(frozen=True, slots=True)
class MotoServer:
    """A running moto server (S3 and the rest of its services) on one port."""

    process: EmulatorProcess
    port: int

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.stop()


def start_azurite(
    *,
    repository_root: Path | None = None,
    startup_timeout_s: float = startup_timeout_s_default,
) -> Azurite:
    """Start ``<root>/node_modules/.bin/azurite``; EmulatorUnavailableError if it is absent."""
    root = repository_root or find_repository_root()
    executable = root / "node_modules" / ".bin" / "azurite"
    if not executable.exists():
        raise EmulatorUnavailableError(
            f"Azurite is not installed at {executable}: run `npm install --no-audit --no-fund` "
            f"in {root} (package.json pins the version)"
        )
    blob_port, queue_port, table_port = free_loopback_ports(3)
    working_directory = Path(tempfile.mkdtemp(prefix="azurite-"))
    command = [
        str(executable),
        "--inMemoryPersistence",
        "--silent",
        "--skipApiVersionCheck",
        "--loose",
        "--disableTelemetry",
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(blob_port),
        "--queueHost",
        "127.0.0.1",
        "--queuePort",
        str(queue_port),
        "--tableHost",
        "127.0.0.1",
        "--tablePort",
        str(table_port),
    ]
    process = _spawn("azurite", command, working_directory)
    process.wait_ready([blob_port, table_port, queue_port], startup_timeout_s)
    return Azurite(process, blob_port, table_port, queue_port)


def start_moto_server(*, startup_timeout_s: float = startup_timeout_s_default) -> MotoServer:
    """Start ``python -m moto.server`` on a free port; EmulatorUnavailableError if absent."""
    try:
        import moto.server  # noqa: F401
    except ImportError as error:
        raise EmulatorUnavailableError(
            "moto is not installed: pip install 'moto[server]' (the dev extra pins it)"
        ) from error
    (port,) = free_loopback_ports(1)
    working_directory = Path(tempfile.mkdtemp(prefix="moto-"))
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = _spawn("moto", command, working_directory)
    process.wait_ready([port], startup_timeout_s)
    return MotoServer(process, port)


@dataclass(frozen=True, slots=True)
class StoreEmulator:
    """An emulator started for a log URL's store, and the environment that points at it."""

    emulator: Azurite | MotoServer
    # For every process of the run: the emulator's endpoint and its test credentials.
    env: dict[str, str]
    # The store's own address (s3: the endpoint URL; azblob: the blob service's origin).
    upstream: str

    def stop(self) -> None:
        self.emulator.stop()


def start_for_store(backend: str) -> StoreEmulator:
    """Start the emulator of a cloud backend (``s3``: a moto server; ``azblob``: Azurite)."""
    if backend == "s3":
        moto_server = start_moto_server()
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AMBROSIA_S3_ENDPOINT_URL": moto_server.endpoint_url,
        }
        return StoreEmulator(moto_server, env, moto_server.endpoint_url)
    if backend == "azblob":
        azurite = start_azurite()
        env = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
        return StoreEmulator(azurite, env, f"http://127.0.0.1:{azurite.blob_port}")
    raise ConfigError(
        f"no emulator for a {backend!r} log: only s3:// (moto) and azblob:// (Azurite)"
    )


def start_or_skip(start: Callable[[], _Emulator]) -> _Emulator:
    """For pytest fixtures: start an emulator, or skip the test with the emulator's error.

    When the ``CI`` environment variable is set an emulator that is missing or did not
    start fails the test instead: in CI no backend test may be skipped
    (``ambrosia.testing.skips``, which also lists every skip at the end of a run).
    """
    from ambrosia.testing.skips import skip_unless_ci

    try:
        return start()
    except (EmulatorUnavailableError, OSError) as error:
        # OSError: the executable exists but could not be run (permissions, format).
        skip_unless_ci(f"emulator unavailable: {error}")
