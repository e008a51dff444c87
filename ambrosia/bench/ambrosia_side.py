"""The ambrosia half of ambrosia-bench: two immortals in two processes.

Throughput (the paper's Figure 5): ``BenchClient`` streams fork calls carrying a byte
array to ``BenchServer``, which counts calls and bytes as part of its logged state. The
client works in steps, the paper's way: each step sends a burst of forks and forks a
self-call for the next step, so the client's own log paces it and back-pressure from
the bounded output buffer applies between steps. The server reports its counters on
standard output (a background task, outside the logged state) and the harness computes
the rate over the measurement window after the warm-up.

Ping (the paper's Table 1): one outstanding awaited call at a time; each round trip is
logged by the server (the call) and by the client (the result) before the client's
handler resumes. The client measures each round trip with ``perf_counter_ns`` and prints
the samples at the end; those timings are benchmark output, not immortal state.

Each measurement point runs a fresh pair of instances with their own log directory.
Their links are plain TCP on loopback, or with ``tls`` mutual TLS with a CA and
certificates made for the pair in its work directory (the cost of TLS, measured).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ambrosia.bench.report import (
    PartialRun,
    PingResult,
    ThroughputPoint,
    latency_summary,
    peak_rss_of,
    throughput_point,
)
from ambrosia.bench.sizes import format_size
from ambrosia.binding.immortal import Immortal, rpc

BURST_BYTES = 8 << 20
STEP_CHAINS = 2
POINT_ATTEMPTS_MAX = 2

PEAK_MEMORY_BYTES: dict[int, dict[str, int]] = {}
"""Peak resident memory of the server and client processes, by message size."""
BURST_MESSAGES_MAX = 20_000
REPORT_INTERVAL_S = 0.2


class BenchServer(Immortal):
    def __init__(self) -> None:
        self.calls = 0
        self.bytes = 0

    @rpc
    def receive(self, payload: bytes) -> None:
        self.calls += 1
        self.bytes += len(payload)

    @rpc
    def ping(self, payload: bytes) -> bytes:
        return payload

    async def on_become_primary(self) -> None:
        self.start_task(self._report())

    async def _report(self) -> None:
        while True:
            line = json.dumps({"t": time.monotonic(), "calls": self.calls, "bytes": self.bytes})
            print(line, flush=True)
            await asyncio.sleep(REPORT_INTERVAL_S)


class BenchClient(Immortal):
    """Configured from the environment on first start only; after that, from its log."""

    def __init__(self) -> None:
        self.size = 0
        self.steps = 0
        self.pings_left = 0

    async def on_first_start(self) -> None:
        mode = os.environ.get("AMBROSIA_BENCH_MODE", "throughput")
        size = int(os.environ.get("AMBROSIA_BENCH_SIZE", "16"))
        if mode == "throughput":
            # Two chains of steps: while one step's self-call is being logged, the other
            # step runs, so the client never idles waiting for its own log.
            for _ in range(STEP_CHAINS):
                self.this.step.fork(size)
        else:
            count = int(os.environ.get("AMBROSIA_BENCH_COUNT", "1000"))
            await self._ping(size, count)

    @rpc
    def step(self, size: int) -> None:
        self.steps += 1
        send = self.proxy(BenchServer, "server").receive.fork
        payload = bytes(size)
        for _ in range(max(1, min(BURST_MESSAGES_MAX, BURST_BYTES // size))):
            send(payload)
        self.this.step.fork(size)

    async def _ping(self, size: int, count: int) -> None:
        server = self.proxy(BenchServer, "server")
        payload = bytes(size)
        samples: list[int] = []
        for _ in range(count):
            started = time.perf_counter_ns()
            await server.ping(payload)
            samples.append(time.perf_counter_ns() - started)
        if not self.replaying:
            print(json.dumps({"samples_ns": samples}), flush=True)


# -- the harness ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _point_log_url(log_url: str | None, workdir: Path) -> str:
    """A log of the point's own: under ``workdir``, or a fresh prefix under ``log_url``.

    Every point runs instances named server and client; were two points to share one
    log, the second would recover the first's state and go on sending its size.
    """
    if log_url is None:
        return f"file://{workdir / 'log'}"
    split = urllib.parse.urlsplit(log_url)
    if split.scheme.lower() == "memory":
        return log_url  # a memory log lives and dies with its one process
    point = f"{workdir.name}-{uuid.uuid4().hex[:8]}"
    return urllib.parse.urlunsplit(split._replace(path=f"{split.path.rstrip('/')}/{point}"))


class _Pair:
    """A server and a client process with their own catalog and log."""

    def __init__(
        self,
        workdir: Path,
        log_url: str | None,
        persist: bool,
        env: dict[str, str],
        tls: bool = False,
        separate: bool = False,
    ):
        if separate and (tls or not persist):
            raise ValueError("the separate binding is measured with a log and plain TCP")
        self.separate = separate
        workdir = workdir.resolve()  # the catalog URL needs an absolute path
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.certs_dir: Path | None = None
        if tls:
            from ambrosia.certs import create_ca, issue_instance_certificate

            self.certs_dir = workdir / "certs"
            ca = create_ca(self.certs_dir)
            for name in ("server", "client"):
                issue_instance_certificate(ca, self.certs_dir, name)
        self.catalog = f"sqlite://{workdir / 'catalog.db'}"
        log = _point_log_url(log_url, workdir)
        self.env = {**os.environ, "AMBROSIA_CATALOG": self.catalog, **env}
        self.persist = persist
        for name in ("server", "client"):
            self._ambrosia(
                "register",
                name,
                "--address",
                f"127.0.0.1:{_free_port()}",
                "--log",
                log,
                "--replace",
            )
        self.processes: list[subprocess.Popen[str]] = []
        self.stderr = open(workdir / "stderr.log", "a")  # noqa: SIM115 - closed in stop()

    def _ambrosia(self, *args: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "ambrosia.cli", *args],
            env=self.env,
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def start(self, name: str, app: str) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "ambrosia.bench.ambrosia_side", "run", name, app]
        if self.separate:
            # The application in a binding process, its coordinator a child process
            # (``ambrosia run --separate``): the language-neutral split, measured.
            command = [
                sys.executable, "-m", "ambrosia.cli", "run", name, "--app", app,
                "--separate", "--plaintext",
            ]  # fmt: skip
        elif not self.persist:
            command.append("--no-persist")
        if self.certs_dir is not None:
            command += ["--tls-dir", str(self.certs_dir)]
        process = subprocess.Popen(
            command, env=self.env, stdout=subprocess.PIPE, stderr=self.stderr, text=True
        )
        self.processes.append(process)
        return process

    def peak_memory(self) -> dict[str, int]:
        """Peak resident set size (VmHWM) of each running process, in bytes."""
        return peak_rss_of(
            {
                name: process.pid
                for name, process in zip(("server", "client"), self.processes, strict=False)
            }
        )

    def diagnosis(self) -> str:
        """Exit codes and the end of both processes' standard error, for a failed point."""
        codes = ", ".join(
            f"{name} exit {process.poll()}"
            for name, process in zip(("server", "client"), self.processes, strict=False)
        )
        self.stderr.flush()
        tail = (self.workdir / "stderr.log").read_text(errors="replace")[-3000:]
        return f"{codes}; standard error ends with:\n{tail}"

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
        for process in self.processes:
            process.wait()
        self.stderr.close()


def _read_json(stream: IO[str], deadline: float) -> dict[str, Any]:
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            raise EOFError("benchmark process exited early")
        line = line.strip()
        if line.startswith("{"):
            decoded: dict[str, Any] = json.loads(line)
            return decoded
    raise TimeoutError("benchmark process stopped reporting")


def _measure_size(
    size: int,
    *,
    duration_s: float,
    warmup_s: float,
    log_url: str | None,
    persist: bool,
    workdir: Path,
    on_progress: Callable[[str, float], None],
    tls: bool = False,
    separate: bool = False,
) -> ThroughputPoint:
    pair = _Pair(
        workdir / f"throughput-{size}",
        log_url,
        persist,
        {"AMBROSIA_BENCH_MODE": "throughput", "AMBROSIA_BENCH_SIZE": str(size)},
        tls,
        separate,
    )
    try:
        server = pair.start("server", "ambrosia.bench.ambrosia_side:BenchServer")
        pair.start("client", "ambrosia.bench.ambrosia_side:BenchClient")
        assert server.stdout is not None
        deadline = time.monotonic() + 60 + warmup_s + duration_s
        first = _read_json(server.stdout, deadline)
        while first["calls"] == 0:
            first = _read_json(server.stdout, deadline)
        warm_until = first["t"] + warmup_s
        start = first
        while start["t"] < warm_until:
            start = _read_json(server.stdout, deadline)
        end = start
        while end["t"] < start["t"] + duration_s:
            end = _read_json(server.stdout, deadline)
            elapsed = end["t"] - start["t"]
            if elapsed > 0:
                rate = (end["calls"] - start["calls"]) / elapsed
                on_progress(f"ambrosia {format_size(size)}", rate)
        calls, received = end["calls"] - start["calls"], end["bytes"] - start["bytes"]
        if received != calls * size:
            raise RuntimeError(
                f"{size}-byte point: the server received {received} bytes in {calls} calls, "
                "not messages of that size"
            )
        peaks = pair.peak_memory()
        PEAK_MEMORY_BYTES[size] = peaks
        (pair.workdir / "peak-memory.json").write_text(json.dumps(peaks))
        return throughput_point(
            "ambrosia", size, end["calls"] - start["calls"], end["t"] - start["t"], peaks
        )
    except (EOFError, TimeoutError) as error:
        raise RuntimeError(f"{size}-byte point failed: {error}\n{pair.diagnosis()}") from None
    finally:
        pair.stop()


def run_throughput(
    sizes: list[int],
    *,
    duration_s: float,
    warmup_s: float,
    log_url: str | None,
    persist: bool,
    workdir: Path,
    on_progress: Callable[[str, float], None],
    tls: bool = False,
    separate: bool = False,
) -> list[ThroughputPoint]:
    points: list[ThroughputPoint] = []
    try:
        for size in sizes:
            for attempt in range(1, POINT_ATTEMPTS_MAX + 1):
                try:
                    point = _measure_size(
                        size,
                        duration_s=duration_s,
                        warmup_s=warmup_s,
                        log_url=log_url,
                        persist=persist,
                        workdir=workdir / f"attempt-{attempt}",
                        on_progress=on_progress,
                        tls=tls,
                        separate=separate,
                    )
                except RuntimeError as error:
                    # A process that dies at start-up (a probed free port taken by someone
                    # else in between, say) costs one point, not the run; say why.
                    if attempt == POINT_ATTEMPTS_MAX:
                        raise
                    print(f"ambrosia-bench: retrying: {error}", file=sys.stderr)
                    continue
                points.append(point)
                break
    except KeyboardInterrupt:
        raise PartialRun(points) from None
    return points


def run_ping(
    *,
    count: int,
    warmup: int,
    log_url: str | None,
    workdir: Path,
    on_progress: Callable[[str, float], None],
    size: int = 16,
    tls: bool = False,
) -> PingResult:
    pair = _Pair(
        workdir / "ping",
        log_url,
        True,
        {
            "AMBROSIA_BENCH_MODE": "ping",
            "AMBROSIA_BENCH_SIZE": str(size),
            "AMBROSIA_BENCH_COUNT": str(count + warmup),
        },
        tls,
    )
    try:
        pair.start("server", "ambrosia.bench.ambrosia_side:BenchServer")
        client = pair.start("client", "ambrosia.bench.ambrosia_side:BenchClient")
        assert client.stdout is not None
        on_progress("ambrosia ping", 0.0)
        result = _read_json(client.stdout, time.monotonic() + 60 + count * 0.05)
        samples: list[int] = result["samples_ns"][warmup:]
        return latency_summary("ambrosia", samples)
    finally:
        pair.stop()


def _run_process(name: str, app: str, persist: bool, tls_dir: Path | None) -> int:
    from ambrosia import eventloop
    from ambrosia.certs import tls_settings_for
    from ambrosia.coordinator.runtime import Config
    from ambrosia.host import load_app, serve

    tls = tls_settings_for(tls_dir, name) if tls_dir is not None else None
    return eventloop.run(
        serve(
            name,
            load_app(app),
            config=Config(persist=persist, tls=tls),
            # Both processes listen on 127.0.0.1 (see ``_Pair``).
            transport={} if tls is not None else {"plaintext": True},
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ambrosia.bench.ambrosia_side")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run")
    run.add_argument("name")
    run.add_argument("app")
    run.add_argument("--no-persist", action="store_true")
    run.add_argument("--tls-dir", type=Path, help="certificates made by ambrosia.certs")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return _run_process(args.name, args.app, not args.no_persist, args.tls_dir)


if __name__ == "__main__":
    sys.exit(main())
