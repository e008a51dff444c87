"""``ambrosia-bench failover --log URL``: kill the primary again and again under load.

A ``FailoverServer`` instance is run by a primary and ``--standbys`` hot standbys
(``ambrosia run server``, role auto), a ``FailoverClient`` calls it one awaited call
after another (a closed loop: steady load, and a call waits for the one before). Every
``--interval-s`` the server's current primary is SIGKILLed and started again (it comes
back as a standby), ``--kills`` times.

What is measured: the server appends the wall-clock time and its process id of every
call it executes as primary (not the replays of its standbys) to a trace file. The
failover time of a kill is from the SIGKILL to the first call executed by another
process: detection (the lease: at once on the file store, the lease duration on the
cloud stores), the standby's last tail read, its chunk and metadata writes, listening,
the client's reconnection, the call's logging on both sides. Reported: p50, p99 and max
over the kills (nearest rank), and calls per second before the first kill, between the
first kill and the end of the last recovery, and after it. Outputs: a JSON results file
(the envelope of ``ambrosia.bench.report``, command ``failover``, rows under
``failover`` and ``failover_kills``), a Markdown table and a plot of calls per second
over time with the kills marked.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from ambrosia.binding.immortal import Immortal, rpc

__all__ = ["FailoverClient", "FailoverServer", "add_arguments", "run_failover_bench"]

TRACE_ENVIRONMENT_VARIABLE = "AMBROSIA_FAILOVER_TRACE"
_ROLE = re.compile(r": role (primary|standby) ")


# The trace file's descriptor: process state, not the immortal's (never checkpointed).
_trace_fd: list[int] = []


def _record_call() -> None:
    if not _trace_fd:
        path = os.environ.get(TRACE_ENVIRONMENT_VARIABLE)
        if not path:
            return
        # O_APPEND: the lines of several processes never interleave within a line.
        _trace_fd.append(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    os.write(_trace_fd[0], f"{time.time():.6f} {os.getpid()}\n".encode())


class FailoverServer(Immortal):
    def __init__(self) -> None:
        self.count = 0

    @rpc
    def call(self, n: int) -> int:
        self.count += 1
        if not self.replaying:
            _record_call()
        return n


class FailoverClient(Immortal):
    def __init__(self) -> None:
        self.sent = 0
        self.wrong = 0

    async def on_first_start(self) -> None:
        self.this.tick.fork(1)

    @rpc
    async def tick(self, n: int) -> None:
        self.sent = n
        if await self.proxy(FailoverServer, "server").call(n) != n:
            self.wrong += 1
        self.this.tick.fork(n + 1)


@dataclass(frozen=True, slots=True)
class FailoverSummary:
    log: str
    kills: int
    p50_s: float
    p99_s: float
    max_s: float
    calls_per_second_before: float
    calls_per_second_during: float
    calls_per_second_after: float


@dataclass(frozen=True, slots=True)
class KillSample:
    kill: int
    victim_pid: int
    killed_at: float
    first_call_after_s: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", help="log URL (default: a file log in the run directory)")
    parser.add_argument("--kills", type=int, default=20, help="primaries killed (default 20)")
    parser.add_argument("--standbys", type=int, default=2, help="hot standbys (default 2)")
    parser.add_argument("--interval-s", type=float, default=3.0, help="between kills")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="load before the first")
    parser.add_argument(
        "--run-option",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for every `ambrosia run` (e.g. --run-option=--store-option "
        "--run-option=lease_duration_s=2)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("results/failover"),
        help="output directory for the JSON, Markdown and plot (default results/failover)",
    )
    parser.add_argument(
        "--emulator",
        action="store_true",
        help="start the log's store on this machine for the run (s3://: a moto server, "
        "azblob://: Azurite from the repository's node_modules), create the bucket or "
        "container, and stop it afterwards",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run directory")


def _nearest_rank(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _read_trace(path: Path) -> list[tuple[float, int]]:
    calls = []
    if path.exists():
        for line in path.read_text().splitlines():
            stamp, _, pid = line.partition(" ")
            if pid:
                calls.append((float(stamp), int(pid)))
    return sorted(calls)


def _first_call_after(trace: Path, killed_at: float, victim_pid: int) -> float | None:
    """When another process than the victim executed its first call after the kill."""
    after = [stamp for stamp, pid in _read_trace(trace) if stamp > killed_at and pid != victim_pid]
    return min(after) if after else None


def _served_since(trace: Path, killed_at: float, victim_pid: int) -> bool:
    return _first_call_after(trace, killed_at, victim_pid) is not None


def _rate(calls: list[tuple[float, int]], start: float, end: float) -> float:
    if end <= start:
        return 0.0
    return sum(1 for stamp, _ in calls if start <= stamp < end) / (end - start)


def run_failover_bench(options: argparse.Namespace) -> int:
    from ambrosia.testing.emulators import StoreEmulator, start_for_store

    store: StoreEmulator | None = None
    env: dict[str, str] = {}
    run_args = tuple(options.run_option)
    if options.emulator:
        backend = urlsplit(options.log or "").scheme
        if backend not in ("s3", "azblob"):
            print(
                f"ambrosia-bench failover: --emulator needs an s3:// or azblob:// --log, "
                f"got {options.log!r}",
                file=sys.stderr,
            )
            return 2
        store = start_for_store(backend)
        env.update(store.env)
        run_args = ("--create-storage", *run_args)
    try:
        return _run_failover(options, env, run_args)
    finally:
        if store is not None:
            store.stop()


def _run_failover(
    options: argparse.Namespace, env: dict[str, str], run_args: tuple[str, ...]
) -> int:
    from ambrosia.testing.harness import Deployment

    directory = Path(tempfile.mkdtemp(prefix="ambrosia-failover-"))
    trace = directory / "trace.txt"
    deployment = Deployment(
        directory / "run",
        log_url=options.log,
        env={TRACE_ENVIRONMENT_VARIABLE: str(trace), **env},
        run_args=run_args,
        strict_exits=True,
    )
    deployment.register("server", "ambrosia.bench.failover:FailoverServer")
    deployment.register("client", "ambrosia.bench.failover:FailoverClient")
    labels = [f"server#{index}" for index in range(1, options.standbys + 2)]

    def role(label: str) -> str | None:
        process = deployment.processes.get(label)
        if process is None or process.poll() is not None:
            return None
        roles = _ROLE.findall(deployment.output(label))
        return roles[-1] if roles else None

    def started(label: str) -> bool:
        return role(label) is not None

    def primary() -> str | None:
        found = [label for label in labels if role(label) == "primary"]
        return found[0] if found else None

    samples: list[KillSample] = []
    began = time.time()
    try:
        for label in labels:
            deployment.start("server", label=label)
            deployment.wait_for(functools.partial(started, label), 120, label)
        deployment.start("client")
        # Load first: the warm-up counts from the first call served.
        deployment.wait_for(lambda: bool(_read_trace(trace)), 300, "the first call")
        time.sleep(options.warmup_s)
        for kill in range(1, options.kills + 1):
            deployment.wait_for(lambda: primary() is not None, 120, "a primary")
            victim = primary()
            assert victim is not None
            deployment.wait_for(
                lambda: sum(role(label) == "standby" for label in labels) >= options.standbys,
                120,
                "every standby",
            )
            pid = deployment.processes[victim].pid
            killed_at = time.time()
            deployment.kill(victim)
            deployment.wait_for(lambda: primary() is not None, 300, "a new primary")
            deployment.wait_for(
                functools.partial(_served_since, trace, killed_at, pid), 300, "a call served"
            )
            first = _first_call_after(trace, killed_at, pid)
            assert first is not None
            samples.append(KillSample(kill, pid, killed_at, first - killed_at))
            print(f"kill {kill}: first call served {first - killed_at:.3f} s after the kill")
            deployment.start("server", label=victim)
            time.sleep(options.interval_s)
        ended = time.time()
    finally:
        deployment.stop_all()
    calls = _read_trace(trace)
    first_kill = samples[0].killed_at
    last_recovered = samples[-1].killed_at + samples[-1].first_call_after_s
    times = [sample.first_call_after_s for sample in samples]
    summary = FailoverSummary(
        log=options.log or "file (run directory)",
        kills=len(samples),
        p50_s=round(_nearest_rank(times, 0.5), 4),
        p99_s=round(_nearest_rank(times, 0.99), 4),
        max_s=round(max(times), 4),
        # From the first call served: the processes' start-up is not load.
        calls_per_second_before=round(
            _rate(calls, calls[0][0] if calls else first_kill, first_kill), 1
        ),
        calls_per_second_during=round(_rate(calls, first_kill, last_recovered), 1),
        calls_per_second_after=round(_rate(calls, last_recovered, ended), 1),
    )
    out: Path = options.out
    out.mkdir(parents=True, exist_ok=True)
    _write_results(out, options, summary, samples)
    _plot(out / "failover.png", calls, samples, began)
    print(_markdown(summary))
    if options.keep:
        print(f"run directory: {directory}")
    else:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


def _write_results(
    out: Path, options: argparse.Namespace, summary: FailoverSummary, samples: list[KillSample]
) -> None:
    from ambrosia.bench.report import SCHEMA_VERSION, environment

    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "command": "failover",
        "created_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "complete": True,
        **environment(),
        "config": {
            key: value if not isinstance(value, Path) else str(value)
            for key, value in vars(options).items()
            if key not in ("handler",)
        },
        "failover": [asdict(summary)],
        "failover_kills": [asdict(sample) for sample in samples],
    }
    (out / "failover.json").write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    (out / "failover.md").write_text(_markdown(summary))


def _markdown(summary: FailoverSummary) -> str:
    header = (
        "| log | kills | p50 s | p99 s | max s | calls/s before | during | after |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    row = (
        f"| {summary.log} | {summary.kills} | {summary.p50_s:.3f} | {summary.p99_s:.3f} | "
        f"{summary.max_s:.3f} | {summary.calls_per_second_before:.0f} | "
        f"{summary.calls_per_second_during:.0f} | {summary.calls_per_second_after:.0f} |\n"
    )
    return header + row


def _plot(
    path: Path, calls: list[tuple[float, int]], samples: list[KillSample], began: float
) -> None:
    try:
        from ambrosia.bench.report import _pyplot

        pyplot = _pyplot()
    except ImportError:
        return
    if not calls:
        return
    end = calls[-1][0]
    seconds = int(end - began) + 1
    bins = [0] * seconds
    for stamp, _ in calls:
        index = int(stamp - began)
        if 0 <= index < seconds:
            bins[index] += 1
    figure, axes = pyplot.subplots(figsize=(10, 4))
    axes.plot(range(seconds), bins, drawstyle="steps-post", label="calls/s")
    for sample in samples:
        axes.axvline(sample.killed_at - began, color="red", alpha=0.4, linewidth=1)
    axes.set_xlabel("seconds (red: primary SIGKILLed)")
    axes.set_ylabel("calls executed per second")
    axes.set_title("calls/s under repeated primary kills")
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
