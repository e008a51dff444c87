"""What an operator's platform talks to: a health endpoint, ``/metrics``, JSON logs.

Configured in the deployment file's ``[operations]`` table (all optional)::

    [operations]
    health_address = "0.0.0.0:9102"   # HTTP: /healthz, /readyz, /status, /metrics
    metrics = true                    # serve /metrics (needs ambrosia[prometheus])
    log_format = "json"               # or "text" (default); also $AMBROSIA_LOG_FORMAT

The endpoint is a small HTTP/1.1 server on the coordinator's event loop, separate from
the peer port (peers speak the binary protocol, with mutual TLS; probes and scrapers
speak HTTP, from inside the cluster). Every request is bounded in size and time, and
one connection answers one request, so a stuck client costs a socket, never the loop.

``/healthz``   200 while the process runs and has not failed (liveness): a standby
               waiting for the lease is alive.
``/readyz``    200 only for the primary: it holds the lease and has recovered, so it
               takes calls (readiness).
``/status``    the same JSON as both, always 200: ``{"instance", "up", "role",
               "lease_held", "epoch", "failure"}``.
``/metrics``   Prometheus text from the OpenTelemetry instruments of
               ``ambrosia.coordinator.metrics``, when ``metrics = true``.

``role`` is what the runtime knows: ``standby`` before it holds the lease (waiting for
another process's lease to end), ``recovering`` while it replays its log, ``primary``
after; ``stopped`` once it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ambrosia.errors import ConfigError

if TYPE_CHECKING:
    from ambrosia.coordinator.runtime import Runtime

__all__ = [
    "LOG_FORMAT_ENVIRONMENT_VARIABLE",
    "HealthServer",
    "HealthStatus",
    "JsonFormatter",
    "OperationsSettings",
    "apply_log_format",
    "health_status",
    "parse_operations",
    "serving",
]

LOG_FORMAT_ENVIRONMENT_VARIABLE = "AMBROSIA_LOG_FORMAT"
LOG_FORMATS = ("text", "json")
REQUEST_BYTES_MAX = 8192
REQUEST_TIMEOUT_S = 5.0
CONNECTIONS_MAX = 64
_KEYS = frozenset({"health_address", "metrics", "log_format"})


@dataclass(frozen=True, slots=True)
class OperationsSettings:
    health_address: tuple[str, int] | None = None
    metrics: bool = False
    log_format: str | None = None  # None: $AMBROSIA_LOG_FORMAT, else text


def parse_operations(table: Mapping[str, Any], where: str) -> OperationsSettings:
    """The ``[operations]`` table; ``where`` names it in errors (file: key)."""
    for key in table:
        if key not in _KEYS:
            raise ConfigError(
                f"{where}{key}: unknown key; known keys here: {', '.join(sorted(_KEYS))}"
            )
    address = None
    text = table.get("health_address")
    if text is not None:
        if not isinstance(text, str):
            raise ConfigError(f"{where}health_address: must be a string HOST:PORT")
        address = parse_http_address(text, f"{where}health_address")
    metrics = table.get("metrics", False)
    if not isinstance(metrics, bool):
        raise ConfigError(f"{where}metrics: must be true or false, not {metrics!r}")
    if metrics and address is None:
        raise ConfigError(f"{where}metrics: /metrics is served on health_address; set it")
    log_format = table.get("log_format")
    if log_format is not None and log_format not in LOG_FORMATS:
        raise ConfigError(f"{where}log_format: {log_format!r}, expected one of {LOG_FORMATS}")
    return OperationsSettings(address, metrics, log_format)


def parse_http_address(text: str, where: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where}: {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


# -- logs ----------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def apply_log_format(log_format: str | None) -> None:
    """Switch the root logger's handlers to ``log_format`` (None: the environment's)."""
    chosen = log_format or os.environ.get(LOG_FORMAT_ENVIRONMENT_VARIABLE, "").strip() or "text"
    if chosen not in LOG_FORMATS:
        raise ConfigError(
            f"{LOG_FORMAT_ENVIRONMENT_VARIABLE}={chosen!r}: expected one of {LOG_FORMATS}"
        )
    if chosen == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())


# -- health ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthStatus:
    instance: str
    up: bool
    role: str
    lease_held: bool
    epoch: int | None
    failure: str | None

    @property
    def ready(self) -> bool:
        return self.up and self.role == "primary"

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "instance": self.instance,
                "up": self.up,
                "role": self.role,
                "lease_held": self.lease_held,
                "epoch": self.epoch,
                "failure": self.failure,
            }
        ).encode()


def health_status(runtime: Runtime) -> HealthStatus:
    """What the runtime knows of itself now (a pure read)."""
    stopped = runtime.stopped.is_set()
    lease = runtime.lease
    if stopped:
        role = "stopped"
    elif runtime.primary.is_set():
        role = "primary"
    elif lease is not None:
        role = "recovering"
    else:
        role = "standby"
    failure = runtime.failure
    return HealthStatus(
        instance=runtime.instance,
        up=not stopped and failure is None,
        role=role,
        lease_held=lease is not None and not stopped,
        epoch=lease.epoch if lease is not None else None,
        failure=None if failure is None else str(failure),
    )


def _install_prometheus() -> Any:
    """An SDK meter provider read by Prometheus; the registry that /metrics serves."""
    try:
        from opentelemetry import metrics
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from prometheus_client import REGISTRY
    except ImportError as error:
        raise ConfigError(
            f"operations.metrics needs {error.name or 'a missing package'}: "
            "pip install 'ambrosia[prometheus]'"
        ) from error
    provider = metrics.get_meter_provider()
    if not isinstance(provider, MeterProvider):
        # The API lets the global provider be set once; an application that set its own
        # keeps it, and its readers decide where the metrics go.
        metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
    return REGISTRY


class HealthServer:
    """The HTTP endpoint of one runtime; ``start`` binds, ``close`` stops."""

    def __init__(self, runtime: Runtime, address: tuple[str, int], *, metrics: bool) -> None:
        self.runtime = runtime
        self.address = address
        self._registry = _install_prometheus() if metrics else None
        self._server: asyncio.Server | None = None
        self._connections = 0
        self.port = 0

    async def start(self) -> None:
        host, port = self.address
        try:
            self._server = await asyncio.start_server(
                self._handle, host, port, limit=REQUEST_BYTES_MAX
            )
        except OSError as error:
            raise ConfigError(f"cannot serve health on {host}:{port}: {error}") from error
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        try:
            if self._connections > CONNECTIONS_MAX:
                self._respond(writer, 503, b"busy\n", "text/plain")
                return
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            if len(head) > REQUEST_BYTES_MAX:
                self._respond(writer, 431, b"request too large\n", "text/plain")
                return
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.partition(" ")[0].partition("?")[0]
            self._route(writer, method, path)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            self._connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _route(self, writer: asyncio.StreamWriter, method: str, path: str) -> None:
        if method not in ("GET", "HEAD"):
            self._respond(writer, 405, b"GET only\n", "text/plain")
            return
        status = health_status(self.runtime)
        if path == "/healthz":
            self._respond(writer, 200 if status.up else 503, status.to_json())
        elif path == "/readyz":
            self._respond(writer, 200 if status.ready else 503, status.to_json())
        elif path == "/status":
            self._respond(writer, 200, status.to_json())
        elif path == "/metrics" and self._registry is not None:
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            self._respond(writer, 200, generate_latest(self._registry), CONTENT_TYPE_LATEST)
        else:
            self._respond(writer, 404, b"not found\n", "text/plain")

    @staticmethod
    def _respond(
        writer: asyncio.StreamWriter,
        code: int,
        body: bytes,
        content_type: str = "application/json",
    ) -> None:
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(code, "Error")
        writer.write(
            f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )


@contextlib.asynccontextmanager
async def serving(
    runtime: Runtime, settings: OperationsSettings
) -> AsyncIterator[HealthServer | None]:
    """Serve ``runtime``'s health (and metrics) for the duration of the block."""
    apply_log_format(settings.log_format)
    if settings.health_address is None:
        yield None
        return
    server = HealthServer(runtime, settings.health_address, metrics=settings.metrics)
    await server.start()
    logging.getLogger("ambrosia.operations").info(
        "%s: health on %s:%d%s",
        runtime.instance,
        settings.health_address[0],
        server.port,
        ", metrics on /metrics" if settings.metrics else "",
    )
    try:
        yield server
    finally:
        await server.close()
