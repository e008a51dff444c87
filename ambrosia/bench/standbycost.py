"""``ambrosia-bench standby-cost``: the storage requests one hot standby makes, counted.

For each cloud store (s3 on a moto server, azblob on Azurite, both started here) a
``FailoverServer`` instance is run by a primary and one hot standby (``ambrosia run``,
role auto). The standby alone reaches the store through a counting HTTP proxy started
here (its endpoint is the proxy; the primary's is the emulator), so what is counted is
every HTTP request the standby sends, retries included, by the store's billing class.
Two windows of ``--seconds`` each, after the standby announced itself: idle (nothing
calls the server) and busy (a ``FailoverClient`` calls it in a closed loop).

The rates are priced with the price sheets' request prices: S3's from
``bench_configs/prices-eks.toml`` (``[s3]``: LIST and PUT at the PUT price, GET and HEAD
at the GET price, DELETE free), Azure Blob's from ``bench_configs/prices-azure.toml``
(``[blob]``: write, list, read and other operations; DELETE free). Outputs: JSON (the
envelope of ``ambrosia.bench.report``, command ``standby-cost``, rows under
``standby_cost``), a Markdown table, and with ``--doc FILE`` that table written into
FILE between the lines ``<!-- standby-cost:begin -->`` and ``<!-- standby-cost:end -->``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import re
import shutil
import socket
import tempfile
import threading
import time
import tomllib
import urllib.parse
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

__all__ = ["add_arguments", "classify_request", "run_standby_cost"]

_ROLE = re.compile(r": role (primary|standby) ")
_BEGIN = "<!-- standby-cost:begin -->"
_END = "<!-- standby-cost:end -->"
BACKENDS = ("s3", "azblob")
# Billing classes, per store.
S3_CLASSES = ("list", "put", "get", "head", "delete")
AZBLOB_CLASSES = ("write", "list", "read", "other", "delete")


def classify_request(backend: str, method: str, target: str) -> str:
    """The billing class of one HTTP request (``target``: path and query)."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
    method = method.upper()
    if backend == "s3":
        if method == "GET":
            return "list" if "list-type" in query or "prefix" in query else "get"
        if method == "HEAD":
            return "head"
        if method == "DELETE":
            return "delete"
        return "put"  # PUT, POST, COPY
    comp = query.get("comp", [""])[0]
    if method == "DELETE":
        return "delete"
    if comp == "list":
        return "list"
    if method == "GET" and not comp:
        return "read"
    if method == "PUT" and comp in ("", "appendblock", "block", "blocklist", "metadata"):
        return "write"
    return "other"  # HEAD (properties), lease, ...


class CountingProxy:
    """An HTTP reverse proxy to ``upstream`` on a loopback port, in its own thread,
    counting requests by billing class (``start_window`` resets the counts)."""

    def __init__(self, backend: str, upstream: str) -> None:
        self.backend = backend
        self.upstream = upstream.rstrip("/")
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the counting proxy did not start")

    def start_window(self) -> None:
        with self._lock:
            self.counts.clear()

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        import aiohttp
        from aiohttp import web

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        session = aiohttp.ClientSession(auto_decompress=False)
        hop = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "expect"}

        async def forward(request: web.BaseRequest) -> web.StreamResponse:
            if request.headers.get("Expect", "").lower() == "100-continue":
                # botocore waits for it before sending a PUT's body; sent on, not forwarded.
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await request.read()
            target = str(request.rel_url)
            with self._lock:
                self.counts[classify_request(self.backend, request.method, target)] += 1
            headers = {k: v for k, v in request.headers.items() if k.lower() not in hop}
            async with session.request(
                request.method,
                self.upstream + target,
                headers=headers,
                data=body if body else None,
                skip_auto_headers=("Content-Type", "Accept-Encoding", "User-Agent", "Accept"),
                allow_redirects=False,
            ) as upstream:
                data = await upstream.read()
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for key, value in upstream.headers.items():
                    if key.lower() not in hop:
                        response.headers.add(key, value)
                length = upstream.headers.get("Content-Length")
                response.content_length = int(length) if length is not None else len(data)
                try:
                    await response.prepare(request)
                    if request.method != "HEAD" and data:
                        await response.write(data)
                    await response.write_eof()
                except ConnectionResetError:
                    pass  # the client gave up on it (a timeout, its exit): counted, sent
                return response

        server = web.Server(forward)
        runner = web.ServerRunner(server)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
            await session.close()


@dataclass(frozen=True, slots=True)
class StandbyCostRow:
    backend: str
    load: str  # idle or busy
    seconds: float
    calls_per_second: float  # calls the primary executed in the window (busy)
    requests_per_second: float
    by_class_per_second: dict[str, float]
    usd_per_month: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        action="append",
        choices=BACKENDS,
        help="cloud store to measure, repeatable (default: s3 and azblob)",
    )
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="length of each window (default 30)"
    )
    parser.add_argument(
        "--s3-prices",
        type=Path,
        default=Path("bench_configs/prices-eks.toml"),
        help="price sheet with an [s3] section (default bench_configs/prices-eks.toml)",
    )
    parser.add_argument(
        "--azure-prices",
        type=Path,
        default=Path("bench_configs/prices-azure.toml"),
        help="price sheet with a [blob] section (default bench_configs/prices-azure.toml)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("results/standby-cost"),
        help="output directory for the JSON and Markdown (default results/standby-cost)",
    )
    parser.add_argument(
        "--doc", type=Path, help="also write the table into this file between its markers"
    )


def _prices(path: Path, section: str) -> tuple[dict[str, float], float, str]:
    document = tomllib.loads(path.read_text(encoding="utf-8"))
    table = document.get(section)
    if not isinstance(table, dict):
        raise SystemExit(f"{path}: no [{section}] section with request prices")
    hours = float(document.get("hours_per_month", 730.0))
    # A section may carry its own source and date (the Azure sheet's [blob] does).
    date = table.get("date", document.get("date"))
    numbers = {k: float(v) for k, v in table.items() if isinstance(v, int | float)}
    return numbers, hours, f"{path.name} [{section}], {date}"


def usd_per_request(backend: str, prices: dict[str, float]) -> dict[str, float]:
    """USD per request of each billing class, from a sheet's section."""
    if backend == "s3":
        put, get = prices["usd_per_1000_puts"] / 1000, prices["usd_per_1000_gets"] / 1000
        return {"list": put, "put": put, "get": get, "head": get, "delete": 0.0}
    return {
        "write": prices["usd_per_10k_write_operations"] / 10_000,
        "list": prices["usd_per_10k_list_operations"] / 10_000,
        "read": prices["usd_per_10k_read_operations"] / 10_000,
        "other": prices["usd_per_10k_other_operations"] / 10_000,
        "delete": 0.0,
    }


def _calls_in(trace: Path, start: float, end: float) -> int:
    if not trace.exists():
        return 0
    count = 0
    for line in trace.read_text().splitlines():
        stamp = line.partition(" ")[0]
        if stamp and start <= float(stamp) < end:
            count += 1
    return count


def _measure(
    backend: str, options: argparse.Namespace, prices: dict[str, float], hours: float
) -> list[StandbyCostRow]:
    from ambrosia.bench.failover import TRACE_ENVIRONMENT_VARIABLE
    from ambrosia.testing.emulators import Azurite, start_for_store
    from ambrosia.testing.harness import Deployment

    directory = Path(tempfile.mkdtemp(prefix=f"ambrosia-standby-cost-{backend}-"))
    trace = directory / "trace.txt"
    store = start_for_store(backend)
    emulator = store.emulator
    env: dict[str, str] = {TRACE_ENVIRONMENT_VARIABLE: str(trace), **store.env}
    proxy = CountingProxy(backend, store.upstream)
    proxy.start()
    if isinstance(emulator, Azurite):
        standby_env = {
            "AZURE_STORAGE_CONNECTION_STRING": emulator.connection_string.replace(
                f"127.0.0.1:{emulator.blob_port}/", f"127.0.0.1:{proxy.port}/"
            )
        }
    else:
        standby_env = {"AMBROSIA_S3_ENDPOINT_URL": proxy.endpoint}
    deployment = Deployment(
        directory / "run",
        log_url=f"{backend}://ambrosia-standby-cost/run-{uuid.uuid4().hex[:12]}",
        env=env,
        run_args=("--create-storage",),
        strict_exits=True,
    )
    deployment.register("server", "ambrosia.bench.failover:FailoverServer")
    deployment.register("client", "ambrosia.bench.failover:FailoverClient")

    def role(label: str) -> str | None:
        roles = _ROLE.findall(deployment.output(label))
        return roles[-1] if roles else None

    per_request = usd_per_request(backend, prices)
    rows = []
    try:
        deployment.start("server", label="primary")
        deployment.wait_for(lambda: role("primary") == "primary", 120, "the primary")
        deployment.start("server", label="standby", env=standby_env)
        deployment.wait_for(lambda: role("standby") == "standby", 120, "the standby")
        for load in ("idle", "busy"):
            if load == "busy":
                deployment.start("client")
                deployment.wait_for(lambda: trace.exists(), 120, "the first call")
            time.sleep(2.0)  # past start-up requests
            proxy.start_window()
            began = time.time()
            time.sleep(options.seconds)
            counts = proxy.snapshot()
            ended = time.time()
            seconds = ended - began
            if role("standby") != "standby":
                raise RuntimeError(f"{backend}: the standby stopped being one during the window")
            by_class = {name: round(counts.get(name, 0) / seconds, 2) for name in per_request}
            usd_per_s = sum(counts.get(name, 0) * price for name, price in per_request.items())
            rows.append(
                StandbyCostRow(
                    backend=backend,
                    load=load,
                    seconds=round(seconds, 1),
                    calls_per_second=round(_calls_in(trace, began, ended) / seconds, 1),
                    requests_per_second=round(sum(counts.values()) / seconds, 2),
                    by_class_per_second=by_class,
                    usd_per_month=round(usd_per_s / seconds * hours * 3600, 2),
                )
            )
    finally:
        deployment.stop_all()
        proxy.stop()
        emulator.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return rows


def markdown(rows: list[StandbyCostRow], sources: dict[str, str]) -> str:
    lines = [
        "| store | primary's load | requests/s | by class, per s | USD per month | prices |",
        "|---|---|---:|---|---:|---|",
    ]
    for row in rows:
        classes = ", ".join(
            f"{name} {rate:g}" for name, rate in row.by_class_per_second.items() if rate
        )
        load = "idle" if row.load == "idle" else f"busy ({row.calls_per_second:g} calls/s)"
        lines.append(
            f"| {row.backend} | {load} | {row.requests_per_second:g} | {classes} | "
            f"{row.usd_per_month:.2f} | {sources[row.backend]} |"
        )
    return "\n".join(lines) + "\n"


def write_into_doc(path: Path, table: str, command: str) -> None:
    text = path.read_text(encoding="utf-8")
    if _BEGIN not in text or _END not in text:
        raise SystemExit(f"{path}: no lines {_BEGIN} and {_END} to write the table between")
    head, _, rest = text.partition(_BEGIN)
    _, _, tail = rest.partition(_END)
    block = f"{_BEGIN}\n<!-- written by `{command}`; do not edit by hand -->\n{table}{_END}"
    path.write_text(head + block + tail, encoding="utf-8")


def run_standby_cost(options: argparse.Namespace) -> int:
    from ambrosia.bench.report import SCHEMA_VERSION, environment

    backends = options.backend or list(BACKENDS)
    rows: list[StandbyCostRow] = []
    sources: dict[str, str] = {}
    for backend in backends:
        sheet = options.s3_prices if backend == "s3" else options.azure_prices
        prices, hours, sources[backend] = _prices(sheet, "s3" if backend == "s3" else "blob")
        measured = _measure(backend, options, prices, hours)
        rows += measured
        for row in measured:
            print(f"{row.backend} {row.load}: {row.requests_per_second:g} requests/s")
    table = markdown(rows, sources)
    out: Path = options.out
    out.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "command": "standby-cost",
        "created_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "complete": True,
        **environment(),
        "config": {
            key: str(value) if isinstance(value, Path) else value
            for key, value in vars(options).items()
            if key not in ("handler",)
        },
        "standby_cost": [asdict(row) for row in rows],
    }
    (out / "standby-cost.json").write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    (out / "standby-cost.md").write_text(table)
    if options.doc is not None:
        command = (
            "ambrosia-bench standby-cost"
            + "".join(f" --backend {backend}" for backend in options.backend or [])
            + f" --seconds {options.seconds:g} --doc {options.doc}"
        )
        write_into_doc(options.doc, table, command)
    print(table)
    return 0
