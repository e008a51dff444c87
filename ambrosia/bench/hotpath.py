"""The binding's share of a 16-byte fork, measured without sockets or a log.

``ambrosia-bench throughput`` measures whole processes: links, the committer, the log,
the event loop and the binding together. This measures only the binding, both halves,
in one process and on one core, so that a change to the hot path (or the compiled
build, ``AMBROSIA_MYPYC=1``) can be judged by a steady figure:

- client: the benchmark client's ``step`` handler, dispatched as the runtime does,
  forks ``BURST`` calls through a proxy into a real ``OutputStream`` (the coordinator's);
- server: the sealed batches of that stream, framed exactly as a log page holds them,
  dispatched to the benchmark server's ``receive`` handler.

Prints ns per call for each half and the calls/s that the binding alone would allow
(the bound the whole pipeline cannot pass). ``--repeat`` rounds; the median is reported.

    python -m ambrosia.bench.hotpath --size 16 --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from ambrosia.bench.ambrosia_side import BenchClient, BenchServer
from ambrosia.binding.dispatcher import Dispatcher
from ambrosia.binding.immortal import method_table
from ambrosia.protocol.outputs import OutputStream, Segment
from ambrosia.wire.messages import KIND_FORK, frame_prefix, rpc_header

MiB = 1 << 20


def compiled_modules() -> list[str]:
    """The ambrosia modules loaded from compiled extensions (the mypyc build)."""
    return sorted(
        name
        for name, module in sys.modules.items()
        if name.startswith("ambrosia.")
        and str(getattr(module, "__file__", "") or "").endswith((".so", ".pyd"))
    )


def _stream(destination: str) -> OutputStream:
    # The coordinator's limits (Config's defaults); nothing drains it during a round.
    return OutputStream(
        destination,
        buffer_bytes_max=1 << 40,
        batch_bytes_max=1 * MiB,
        on_dirty=lambda stream: None,
        on_blocked=lambda stream: None,
        on_unblocked=lambda stream: None,
    )


def _step_message(size: int) -> bytes:
    header = rpc_header(method_table(BenchClient)["step"].method_id, KIND_FORK)
    from ambrosia.binding import codec

    body = codec.encode_args((size,))
    return frame_prefix(len(header) + len(body)) + header + body


def client_round(size: int) -> tuple[float, list[Segment]]:
    """Seconds for one ``step`` (a burst of forks); the batches it produced."""
    streams: dict[str, OutputStream] = {}

    def open_stream(destination: str) -> OutputStream:
        stream = streams[destination] = _stream(destination)
        return stream

    app = BenchClient()
    app.size = size
    dispatcher = Dispatcher("client", app, open_stream, lambda message: None)
    dispatcher.started = True
    step = _step_message(size)
    started = time.perf_counter()
    dispatcher.dispatch("client", step, 0, len(step))
    elapsed = time.perf_counter() - started
    server = streams["server"]
    server.seal()
    return elapsed, list(server.unsent)


def server_round(segments: list[Segment]) -> tuple[float, int]:
    """Seconds to dispatch every batch (as the runtime delivers a group); calls seen."""
    app = BenchServer()
    dispatcher = Dispatcher("server", app, _stream, lambda message: None)
    groups = [bytes(segment.data) for segment in segments]
    started = time.perf_counter()
    for data in groups:
        dispatcher.dispatch("client", data, 0, len(data))
    elapsed = time.perf_counter() - started
    return elapsed, app.calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ambrosia.bench.hotpath")
    parser.add_argument("--size", type=int, default=16, help="payload bytes (default 16)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds (default 5)")
    args = parser.parse_args(argv)
    if args.size < 1 or args.repeat < 1:
        parser.error("--size and --repeat must be at least 1")
    client_ns: list[float] = []
    server_ns: list[float] = []
    for _ in range(args.repeat):
        client_s, segments = client_round(args.size)
        calls = sum(segment.count for segment in segments)
        server_s, seen = server_round(segments)
        if seen != calls:
            raise SystemExit(f"server saw {seen} calls of {calls}")
        client_ns.append(client_s / calls * 1e9)
        server_ns.append(server_s / calls * 1e9)
    client = statistics.median(client_ns)
    server = statistics.median(server_ns)
    compiled = compiled_modules()
    print(f"size {args.size} B, {calls} calls a round, median of {args.repeat}")
    print(f"client fork:     {client:7.1f} ns/call  ({1e9 / client:12,.0f} calls/s)")
    print(f"server dispatch: {server:7.1f} ns/call  ({1e9 / server:12,.0f} calls/s)")
    print(f"compiled modules: {', '.join(compiled) if compiled else 'none (pure Python)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
