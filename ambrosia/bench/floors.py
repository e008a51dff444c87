"""The machine's floors for ping: what this machine does to any round trip, measured alone.

Three floors, each in its own process, each a row beside ambrosia's and gRPC's:

- ``tcp``: a bare TCP echo between two processes, nothing else. A round trip between
  two processes on one machine costs two wake-ups of a sleeping process, two passes
  through the loopback TCP stack and a few Python statements on each side. No
  framework, serializer or log can make a round trip cheaper than that.
- ``cpu``: no round trip at all: one process runs a fixed unit of Python work (about
  0.2 ms) again and again, with a pause between units like the idle half of a ping. A
  machine whose CPU is sometimes taken away (a virtual machine on a busy host) runs
  some units many times slower; on the development VM every 1-2 s for 50-90 ms, with
  the unit's p99.9 about 12x its median. A round trip is a few such stretches of work,
  so its tail cannot be lighter than this one's: the ratio p99.9 / p50 of this row is
  the lowest any system can show here.
- ``disk``: two small synchronous writes, one after the other, to a file opened with
  ``O_DSYNC`` in the run's work directory (the file system the default log uses). A
  durable round trip needs at least that: the callee's log makes the call durable before
  it runs, the caller's log makes the result durable before the caller sees it, and the
  second cannot start before the first ended. A round trip with nothing logged (gRPC) pays
  none of it, so ambrosia's ping can only be as fast as gRPC's where this row is well
  under gRPC's.

Reading ambrosia's or gRPC's p99.9 without the floors beside it would blame them for
the machine's tail; with them, the part each system adds is the difference.

Processes. ``python -m ambrosia.bench.floors serve [--size S]`` binds 127.0.0.1 on a
port the kernel picks, prints ``{"port": P}`` as one JSON line and then, one connection
at a time until it is killed, reads exactly S bytes and sends them back. ``... client
--port P --count N --warmup W --size S`` connects, makes W untimed and then N timed round
trips, one outstanding at a time (send S bytes, receive exactly S bytes), one started
every ``--interval`` seconds (default 0.5 ms, see ``interval_s_default``), and prints JSON
lines: progress while it runs, then ``{"event": "samples", "samples_ns": [...]}``.
Both use blocking sockets with TCP_NODELAY, the cheapest path Python has: a blocking
``recv`` sleeps in the kernel until the bytes arrive, with no event loop or poll call in
between, and Nagle's algorithm would otherwise hold a small reply back waiting for an
acknowledgement. ``... cpu --count N --warmup W`` times N units of the cpu floor after W
untimed ones, one started every ``--interval`` seconds, and prints the same lines;
``... disk --directory D --count N --warmup W`` the same for the disk floor, in a file it
creates in D and removes when done.

The benchmark process runs them as ``children.ChildProcess`` (own session, deadlines,
always killed and reaped). Samples become a row by ``report.latency_summary``, the
same function the other systems use, so all the rows are comparable.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import orjson

from ambrosia.bench.children import ChildProcess, child_process
from ambrosia.bench.report import PingResult, latency_summary
from ambrosia.bench.sizes import size_bytes_max

__all__ = [
    "CPU_SYSTEM",
    "DISK_SYSTEM",
    "SYSTEM",
    "message_bytes_default",
    "run_cpu_floor",
    "run_disk_floor",
    "run_ping",
]

SYSTEM = "tcp"
CPU_SYSTEM = "cpu"
DISK_SYSTEM = "disk"
# One write of the disk floor: about the page the log writes for one 16-byte call (the
# page header, a group header, the framed call).
disk_write_bytes = 128
# One unit of the cpu floor: this many iterations of a small arithmetic loop, about
# 0.2 ms of CPython on the development machine (it need not match anything exactly: the
# row's ratio p99.9 / p50 is what matters, and it does not depend on the unit's size
# while the unit is much shorter than the machine's slow spells).
cpu_unit_iterations = 2500
message_bytes_default = 16
server_start_timeout_s = 20.0
# Progress lines come every progress_interval_s, so this much silence means a hang.
client_silence_timeout_s = 30.0
client_exit_timeout_s = 10.0
progress_interval_s = 0.25
# One round trip started every half millisecond, about the rate of the other two systems'
# pings here: unpaced, 10,000 echoes take a quarter of a second and may fall between the
# machine's slow spells (on the development VM, ~50 ms every second or two), so the
# floor would not have been exposed to the same stretch of machine time as the others.
interval_s_default = 0.0005
_round_trips_between_clock_reads = 64
_listen_backlog = 4


# -- the two child processes -------------------------------------------------------------


def _no_delay(connection: socket.socket) -> None:
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _receive_exactly(connection: socket.socket, view: memoryview) -> bool:
    """Fill ``view`` from the connection; False if the peer closed before it was full."""
    filled = 0
    while filled < len(view):
        received = connection.recv_into(view[filled:])
        if received == 0:
            return False
        filled += received
    return True


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(event) + b"\n")
    sys.stdout.buffer.flush()


def serve(size_bytes: int) -> None:
    """Echo messages of ``size_bytes`` on 127.0.0.1, one connection at a time, forever."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(_listen_backlog)
        _emit({"port": listener.getsockname()[1]})
        buffer = bytearray(size_bytes)
        view = memoryview(buffer)
        while True:
            connection, _ = listener.accept()
            with connection:
                _no_delay(connection)
                while _receive_exactly(connection, view):
                    connection.sendall(view)


def _timed_units(
    unit: Callable[[int], None],
    count: int,
    warmup: int,
    interval_s: float,
    check: Callable[[int], None] | None = None,
) -> None:
    """Time ``unit(index)`` ``warmup + count`` times, one started every ``interval_s``;
    print progress while it runs and the timed samples (after the warm-up) at the end.
    ``check(index)``, outside the timed part, runs on the units where progress is read."""
    clock = time.perf_counter_ns
    samples: list[int] = []
    started = time.perf_counter()
    next_report = started + progress_interval_s
    for index in range(warmup + count):
        before = clock()
        unit(index)
        after = clock()
        if index >= warmup:
            samples.append(after - before)
        # Untimed pause: the next unit starts interval_s after this one did.
        pause_s = interval_s - (clock() - before) / 1e9
        if pause_s > 0:
            time.sleep(pause_s)
        if index % _round_trips_between_clock_reads == 0:
            if check is not None:
                check(index)
            now = time.perf_counter()
            if now >= next_report:
                rate = (index + 1) / (now - started)
                _emit({"event": "progress", "done": index + 1, "rate": rate})
                next_report = now + progress_interval_s
    _emit({"event": "samples", "samples_ns": samples})


def _client(port: int, count: int, warmup: int, size_bytes: int, interval_s: float) -> None:
    payload = bytes(index % 256 for index in range(size_bytes))
    reply = bytearray(size_bytes)
    view = memoryview(reply)
    with socket.create_connection(("127.0.0.1", port), timeout=server_start_timeout_s) as peer:
        # Blocking from here on: a timeout would turn every recv into a poll plus a recv.
        peer.settimeout(None)
        _no_delay(peer)

        def round_trip(index: int) -> None:
            peer.sendall(payload)
            if not _receive_exactly(peer, view):
                raise ConnectionError(f"server closed the connection at round trip {index}")

        def check(index: int) -> None:
            if reply != payload:
                raise RuntimeError(f"echo differs from what was sent at round trip {index}")

        _timed_units(round_trip, count, warmup, interval_s, check)


def _cpu_unit(_: int) -> None:
    total = 0
    for index in range(cpu_unit_iterations):
        total += index * index


def _cpu(count: int, warmup: int, interval_s: float) -> None:
    """Time ``count`` units of fixed CPU work (after ``warmup``), one every ``interval_s``."""
    _timed_units(_cpu_unit, count, warmup, interval_s)


def _disk(directory: Path, count: int, warmup: int, interval_s: float) -> None:
    """Time ``count`` pairs of O_DSYNC appends (after ``warmup``), one every ``interval_s``."""
    path = directory / f"disk-floor-{os.getpid()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_DSYNC | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    page = os.urandom(disk_write_bytes)

    def unit(_: int) -> None:
        # Each write returns once its bytes are on stable storage; the log's page writes
        # are the same call on the same kind of file.
        if os.write(fd, page) != len(page) or os.write(fd, page) != len(page):
            raise OSError(f"short write to {path}")

    try:
        _timed_units(unit, count, warmup, interval_s)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


# -- the benchmark process's side ------------------------------------------------------


def _child(role: str, arguments: list[str]) -> AbstractContextManager[ChildProcess]:
    label = f"{role} floor" if role in (CPU_SYSTEM, DISK_SYSTEM) else f"tcp {role}"
    return child_process("ambrosia.bench.floors", [role, *arguments], label=label)


def _check(count: int, warmup: int, size: int) -> None:
    if count < 1:
        raise ValueError(f"ping count must be at least 1, got {count}")
    if warmup < 0:
        raise ValueError(f"ping warm-up must not be negative, got {warmup}")
    if not 1 <= size <= size_bytes_max:
        raise ValueError(f"message size must be 1..{size_bytes_max} bytes, got {size}")


def run_ping(
    *,
    count: int,
    warmup: int,
    on_progress: Callable[[str, float], None],
    size: int = message_bytes_default,
    interval_s: float = interval_s_default,
) -> PingResult:
    """``count`` timed echo round trips of ``size`` bytes after ``warmup`` untimed ones,
    one started every ``interval_s`` (0: back to back)."""
    _check(count, warmup, size)
    with _child("serve", ["--size", str(size)]) as server:
        port = int(server.read_event(server_start_timeout_s)["port"])
        client_arguments = ["--port", str(port), "--count", str(count)]
        client_arguments += ["--warmup", str(warmup), "--size", str(size)]
        client_arguments += ["--interval", str(interval_s)]
        with _child("client", client_arguments) as client:
            samples = _samples(client, "tcp ping", count, on_progress)
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name()} exited during the run{server.exit_report()}")
    return latency_summary(SYSTEM, samples)


def _samples(
    child: ChildProcess, label: str, count: int, on_progress: Callable[[str, float], None]
) -> list[int]:
    """Read a timing child's progress lines until its samples; check it exits cleanly."""
    samples: list[int] | None = None
    while samples is None:
        event = child.read_event(client_silence_timeout_s)
        if event.get("event") == "progress":
            on_progress(label, float(event["rate"]))
        elif event.get("event") == "samples":
            samples = [int(sample) for sample in event["samples_ns"]]
    child.wait_ok(client_exit_timeout_s)
    if len(samples) != count:
        raise RuntimeError(f"{label} returned {len(samples)} samples, expected {count}")
    return samples


def run_cpu_floor(
    *,
    count: int,
    warmup: int,
    on_progress: Callable[[str, float], None],
    interval_s: float = interval_s_default,
) -> PingResult:
    """``count`` timed units of fixed CPU work after ``warmup`` untimed ones, one started
    every ``interval_s``, in a child process of its own."""
    _check(count, warmup, message_bytes_default)
    arguments = ["--count", str(count), "--warmup", str(warmup), "--interval", str(interval_s)]
    with _child("cpu", arguments) as probe:
        samples = _samples(probe, "cpu floor", count, on_progress)
    return latency_summary(CPU_SYSTEM, samples)


def run_disk_floor(
    *,
    directory: Path,
    count: int,
    warmup: int,
    on_progress: Callable[[str, float], None],
    interval_s: float = interval_s_default,
) -> PingResult:
    """``count`` timed pairs of small O_DSYNC writes in ``directory`` after ``warmup``
    untimed ones, one started every ``interval_s``, in a child process of its own."""
    _check(count, warmup, message_bytes_default)
    directory.mkdir(parents=True, exist_ok=True)
    arguments = ["--directory", str(directory), "--count", str(count)]
    arguments += ["--warmup", str(warmup), "--interval", str(interval_s)]
    with _child(DISK_SYSTEM, arguments) as probe:
        samples = _samples(probe, "disk floor", count, on_progress)
    return latency_summary(DISK_SYSTEM, samples)


# -- entry point of the child processes ------------------------------------------------


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ambrosia.bench.floors")
    roles = parser.add_subparsers(dest="role", required=True)
    serve_parser = roles.add_parser("serve")
    serve_parser.add_argument("--size", type=int, default=message_bytes_default)
    client_parser = roles.add_parser("client")
    client_parser.add_argument("--port", type=int, required=True)
    client_parser.add_argument("--count", type=int, required=True)
    client_parser.add_argument("--warmup", type=int, default=0)
    client_parser.add_argument("--size", type=int, default=message_bytes_default)
    client_parser.add_argument("--interval", type=float, default=interval_s_default)
    cpu_parser = roles.add_parser("cpu")
    cpu_parser.add_argument("--count", type=int, required=True)
    cpu_parser.add_argument("--warmup", type=int, default=0)
    cpu_parser.add_argument("--interval", type=float, default=interval_s_default)
    disk_parser = roles.add_parser("disk")
    disk_parser.add_argument("--directory", type=Path, required=True)
    disk_parser.add_argument("--count", type=int, required=True)
    disk_parser.add_argument("--warmup", type=int, default=0)
    disk_parser.add_argument("--interval", type=float, default=interval_s_default)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = _arguments(argv)
    try:
        if arguments.role == "serve":
            _check(1, 0, arguments.size)
            serve(arguments.size)
        elif arguments.role in ("cpu", "disk"):
            _check(arguments.count, arguments.warmup, message_bytes_default)
            if not 0 <= arguments.interval <= 1:
                raise SystemExit(f"--interval must be 0..1 seconds, got {arguments.interval}")
            if arguments.role == "cpu":
                _cpu(arguments.count, arguments.warmup, arguments.interval)
            else:
                _disk(arguments.directory, arguments.count, arguments.warmup, arguments.interval)
        else:
            _check(arguments.count, arguments.warmup, arguments.size)
            if not 0 <= arguments.interval <= 1:
                raise SystemExit(f"--interval must be 0..1 seconds, got {arguments.interval}")
            _client(
                arguments.port,
                arguments.count,
                arguments.warmup,
                arguments.size,
                arguments.interval,
            )
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
