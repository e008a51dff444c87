"""The gRPC baseline of the paper's evaluation (section 7.1), in two real processes.

The paper compares ambrosia with gRPC's client-streaming RPC, the fastest way gRPC offers
to push many payloads one way: a server exposes ``Receive(stream Payload) returns (Count)``
and keeps a running total of what arrives; for latency, one unary call at a time. This
module is that baseline, with the service described in protobuf terms::

    service Bench {
      rpc Receive(stream Payload) returns (Count);
      rpc Ping(Payload) returns (Payload);
    }
    message Payload { bytes data = 1; }
    message Count { uint64 messages = 1; uint64 payload_bytes = 2; double seconds = 3; }

The messages are encoded by hand (below) in exactly the protobuf wire format and served
through grpc's generic handlers, so there is no code generation step and any protobuf
client could call this server. A byte array is the payload because, as in the paper, the
point is to measure transport, not serialization.

Processes. ``python -m ambrosia.bench.grpc_side serve --port 0`` binds 127.0.0.1, prints
the port it got and serves until killed. ``... client --port P throughput|ping`` runs the
sending side and prints JSON lines (progress while it runs, one line per result). The
benchmark process only starts both and reads lines, so server and client each get a core
of their own, like the two immortals of the ambrosia side. Both children are started in
their own session, so a Ctrl-C reaches only the benchmark process, which then kills them
by PID.

What is measured. Throughput: for each size, a warm-up stream (discarded), then one
stream of ``duration_s``; the server counts messages and payload bytes and times the
window from the first message's arrival to the end of the stream, and those server-side
numbers become the point. Ping: ``warmup`` unary round trips, then ``count`` timed ones,
each sample in nanoseconds from before the call until its reply is decoded.

Choices measured on the 2-core development machine: the synchronous server (a thread
pool) received more per second than the asyncio server, and the asyncio client sent
faster than the synchronous one (whose request iterator runs on a separate thread,
fighting the GIL); the synchronous client gave the lowest unary round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import orjson

from ambrosia.bench.children import ChildProcess, child_process
from ambrosia.bench.report import (
    PartialRun,
    PingResult,
    ThroughputPoint,
    latency_summary,
    peak_rss_of,
    throughput_point,
)
from ambrosia.bench.sizes import format_size, size_bytes_max

__all__ = [
    "PING_METHOD",
    "RECEIVE_METHOD",
    "SERVICE",
    "Count",
    "GrpcServer",
    "decode_count",
    "decode_payload",
    "encode_count",
    "encode_payload",
    "ping_payload_bytes",
    "run_ping",
    "run_throughput",
]

SERVICE = "ambrosia.bench.Bench"
RECEIVE_METHOD = f"/{SERVICE}/Receive"
PING_METHOD = f"/{SERVICE}/Ping"

ping_payload_bytes = 16
# Room for the largest payload plus its field header.
grpc_message_bytes_max = size_bytes_max + 16
server_start_timeout_s = 20.0
# How long a client may stay silent beyond the time its work should take.
client_silence_slack_s = 30.0
progress_interval_s = 0.25
_writes_between_clock_reads = 64

# -- the protobuf wire format, by hand --------------------------------------------------

_TAG_PAYLOAD_DATA = 0x0A  # field 1, length-delimited
_TAG_COUNT_MESSAGES = 0x08  # field 1, varint
_TAG_COUNT_BYTES = 0x10  # field 2, varint
_TAG_COUNT_SECONDS = 0x19  # field 3, 64-bit (double)


def _varint(value: int) -> bytes:
    if value < 0:
        raise ValueError(f"varint of negative value {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(raw: bytes, offset: int) -> tuple[int, int]:
    value = 0
    for index in range(10):
        if offset + index >= len(raw):
            raise ValueError("truncated varint")
        byte = raw[offset + index]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value, offset + index + 1
    raise ValueError("varint longer than 10 bytes")


def encode_payload(data: bytes) -> bytes:
    """``Payload { bytes data = 1; }`` on the wire. Empty data is the empty message."""
    if not data:
        return b""
    return bytes([_TAG_PAYLOAD_DATA]) + _varint(len(data)) + data


def decode_payload(raw: bytes) -> bytes:
    """The ``data`` field of a serialized Payload (the last one wins, as in protobuf)."""
    data = b""
    offset = 0
    while offset < len(raw):
        if raw[offset] != _TAG_PAYLOAD_DATA:
            raise ValueError(f"unexpected field tag {raw[offset]:#x} in Payload")
        length, offset = _read_varint(raw, offset + 1)
        if offset + length > len(raw):
            raise ValueError("Payload data runs past the end of the message")
        data = raw[offset : offset + length]
        offset += length
    return data


@dataclass(frozen=True, slots=True)
class Count:
    """The server's tally of one Receive stream."""

    messages: int
    payload_bytes: int
    seconds: float


def encode_count(count: Count) -> bytes:
    out = bytearray()
    if count.messages:
        out += bytes([_TAG_COUNT_MESSAGES]) + _varint(count.messages)
    if count.payload_bytes:
        out += bytes([_TAG_COUNT_BYTES]) + _varint(count.payload_bytes)
    if count.seconds:
        out += bytes([_TAG_COUNT_SECONDS]) + _pack_double(count.seconds)
    return bytes(out)


def _pack_double(value: float) -> bytes:
    return struct.pack("<d", value)


def decode_count(raw: bytes) -> Count:
    fields: dict[int, int | float] = {}
    offset = 0
    while offset < len(raw):
        tag = raw[offset]
        offset += 1
        if tag in (_TAG_COUNT_MESSAGES, _TAG_COUNT_BYTES):
            fields[tag], offset = _read_varint(raw, offset)
        elif tag == _TAG_COUNT_SECONDS:
            if offset + 8 > len(raw):
                raise ValueError("truncated double in Count")
            fields[tag] = struct.unpack_from("<d", raw, offset)[0]
            offset += 8
        else:
            raise ValueError(f"unexpected field tag {tag:#x} in Count")
    return Count(
        messages=int(fields.get(_TAG_COUNT_MESSAGES, 0)),
        payload_bytes=int(fields.get(_TAG_COUNT_BYTES, 0)),
        seconds=float(fields.get(_TAG_COUNT_SECONDS, 0.0)),
    )


def _identity(raw: bytes) -> bytes:
    return raw


# -- server process ---------------------------------------------------------------------


def _receive(requests: Iterator[bytes], context: Any) -> Count:
    messages = 0
    payload_bytes = 0
    first_arrival = 0.0
    for data in requests:
        if not messages:
            first_arrival = time.perf_counter()
        messages += 1
        payload_bytes += len(data)
    seconds = time.perf_counter() - first_arrival if messages else 0.0
    return Count(messages=messages, payload_bytes=payload_bytes, seconds=seconds)


def _ping(data: bytes, context: Any) -> bytes:
    return data


def _channel_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", grpc_message_bytes_max),
        ("grpc.max_send_message_length", grpc_message_bytes_max),
    ]


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Serve Receive and Ping on host:port (0 picks a free port) until the process ends."""
    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=_channel_options())
    handlers = {
        "Receive": grpc.stream_unary_rpc_method_handler(
            _receive, request_deserializer=decode_payload, response_serializer=encode_count
        ),
        "Ping": grpc.unary_unary_rpc_method_handler(
            _ping, request_deserializer=decode_payload, response_serializer=encode_payload
        ),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"could not bind {host}:{port}")
    server.start()
    print(bound, flush=True)
    server.wait_for_termination()


# -- client process ---------------------------------------------------------------------


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(event) + b"\n")
    sys.stdout.buffer.flush()


async def _stream_once(
    stub: Any, size_bytes: int, seconds: float, report: Callable[[float], None] | None
) -> Count:
    data = bytes(size_bytes)
    call = stub()
    start = time.perf_counter()
    end = start + seconds
    next_report = start + progress_interval_s
    sent = 0
    while True:
        for _ in range(_writes_between_clock_reads):
            await call.write(data)
        sent += _writes_between_clock_reads
        now = time.perf_counter()
        if now >= end:
            break
        if report is not None and now >= next_report:
            report(sent / (now - start))
            next_report = now + progress_interval_s
    await call.done_writing()
    count: Count = await call
    return count


async def _client_throughput(
    port: int, sizes: list[int], duration_s: float, warmup_s: float
) -> None:
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=_channel_options()) as ch:
        stub = ch.stream_unary(
            RECEIVE_METHOD, request_serializer=encode_payload, response_deserializer=decode_count
        )
        for size in sizes:
            if warmup_s > 0:
                await _stream_once(stub, size, warmup_s, None)

            def report(rate: float, size: int = size) -> None:
                _emit({"event": "progress", "size_bytes": size, "rate": rate})

            count = await _stream_once(stub, size, duration_s, report)
            _emit(
                {
                    "event": "point",
                    "size_bytes": size,
                    "messages": count.messages,
                    "payload_bytes": count.payload_bytes,
                    "seconds": count.seconds,
                }
            )


def _client_ping(port: int, count: int, warmup: int) -> None:
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}", options=_channel_options()) as channel:
        ping = channel.unary_unary(
            PING_METHOD, request_serializer=encode_payload, response_deserializer=decode_payload
        )
        payload = bytes(ping_payload_bytes)
        for _ in range(warmup):
            ping(payload)
        samples: list[int] = []
        clock = time.perf_counter_ns
        next_report = time.perf_counter() + progress_interval_s
        started = time.perf_counter()
        for index in range(count):
            before = clock()
            reply = ping(payload)
            samples.append(clock() - before)
            if len(reply) != ping_payload_bytes:
                raise RuntimeError(f"ping reply of {len(reply)} bytes, sent {ping_payload_bytes}")
            if index % 64 == 0 and time.perf_counter() >= next_report:
                _emit(
                    {
                        "event": "progress",
                        "done": index + 1,
                        "rate": (index + 1) / (time.perf_counter() - started),
                    }
                )
                next_report = time.perf_counter() + progress_interval_s
        _emit({"event": "samples", "samples_ns": samples})


# -- the benchmark process's side: start children, read their lines ---------------------


_MODULE = "ambrosia.bench.grpc_side"
_LABEL = "gRPC benchmark"
# Terminated first, killed after this grace period: the gRPC server shuts down cleanly.
_GRACEFUL_STOP_S = 3.0


def _child(arguments: list[str]) -> AbstractContextManager[ChildProcess]:
    return child_process(_MODULE, arguments, label=_LABEL, graceful_stop_s=_GRACEFUL_STOP_S)


class GrpcServer:
    """The server process: ``with GrpcServer() as server: ... server.port``."""

    def __init__(self) -> None:
        self.port = 0
        self._child: ChildProcess | None = None

    @property
    def pid(self) -> int | None:
        return self._child.process.pid if self._child else None

    def __enter__(self) -> GrpcServer:
        self._child = ChildProcess(
            _MODULE, ["serve", "--port", "0"], label=_LABEL, graceful_stop_s=_GRACEFUL_STOP_S
        )
        try:
            self.port = int(self._child.read_line(server_start_timeout_s))
        except BaseException:
            self._child.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._child is not None:
            self._child.stop()


def _events(child: ChildProcess, timeout_s: float) -> Iterable[dict[str, Any]]:
    while True:
        try:
            line = child.read_line(timeout_s)
        except RuntimeError:
            if child.process.poll() == 0:
                return
            raise
        event = orjson.loads(line)
        if not isinstance(event, dict):
            raise RuntimeError(f"unexpected line from gRPC client: {line[:200]!r}")
        yield event


def run_throughput(
    sizes: list[int],
    *,
    duration_s: float,
    warmup_s: float,
    on_progress: Callable[[str, float], None],
) -> list[ThroughputPoint]:
    """One point per size, counted by the server; Ctrl-C raises PartialRun with the rest."""
    points: list[ThroughputPoint] = []
    try:
        with (
            GrpcServer() as server,
            _child(
                [
                    "client",
                    "--port",
                    str(server.port),
                    "throughput",
                    "--sizes",
                    ",".join(map(str, sizes)),
                    "--duration",
                    repr(duration_s),
                    "--warmup",
                    repr(warmup_s),
                ]
            ) as client,
        ):
            silence_s = duration_s + warmup_s + client_silence_slack_s
            for event in _events(client, silence_s):
                if event["event"] == "progress":
                    on_progress(f"grpc {format_size(event['size_bytes'])}", event["rate"])
                elif event["event"] == "point":
                    if event["messages"] <= 0 or event["seconds"] <= 0:
                        raise RuntimeError(f"gRPC server received nothing at {event}")
                    # Read while both processes still live: the client exits after its
                    # last point. With several sizes per run the peaks are cumulative.
                    peaks = peak_rss_of({"server": server.pid, "client": client.process.pid})
                    points.append(
                        throughput_point(
                            "grpc",
                            event["size_bytes"],
                            event["messages"],
                            event["seconds"],
                            peaks,
                        )
                    )
                    on_progress(
                        f"grpc {format_size(event['size_bytes'])} done",
                        points[-1].messages_per_second,
                    )
            client.wait_ok(10)
    except KeyboardInterrupt as interrupt:
        raise PartialRun(points) from interrupt
    return points


def run_ping(*, count: int, warmup: int, on_progress: Callable[[str, float], None]) -> PingResult:
    """``count`` timed unary round trips after ``warmup`` untimed ones."""
    samples: list[int] = []
    with (
        GrpcServer() as server,
        _child(
            [
                "client",
                "--port",
                str(server.port),
                "ping",
                "--count",
                str(count),
                "--warmup",
                str(warmup),
            ]
        ) as client,
    ):
        for event in _events(client, client_silence_slack_s):
            if event["event"] == "progress":
                on_progress("grpc ping", event["rate"])
            elif event["event"] == "samples":
                samples = [int(sample) for sample in event["samples_ns"]]
        client.wait_ok(10)
    if len(samples) != count:
        raise RuntimeError(f"gRPC ping returned {len(samples)} samples, expected {count}")
    return latency_summary("grpc", samples)


# -- entry point of the child processes ------------------------------------------------


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ambrosia.bench.grpc_side")
    commands = parser.add_subparsers(dest="role", required=True)
    serve_parser = commands.add_parser("serve")
    serve_parser.add_argument("--port", type=int, default=0)
    client_parser = commands.add_parser("client")
    client_parser.add_argument("--port", type=int, required=True)
    work = client_parser.add_subparsers(dest="work", required=True)
    throughput = work.add_parser("throughput")
    throughput.add_argument("--sizes", required=True)
    throughput.add_argument("--duration", type=float, required=True)
    throughput.add_argument("--warmup", type=float, default=0.0)
    ping = work.add_parser("ping")
    ping.add_argument("--count", type=int, required=True)
    ping.add_argument("--warmup", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = _arguments(argv)
    try:
        if arguments.role == "serve":
            serve(arguments.port)
        elif arguments.work == "throughput":
            sizes = [int(size) for size in arguments.sizes.split(",")]
            asyncio.run(
                _client_throughput(arguments.port, sizes, arguments.duration, arguments.warmup)
            )
        else:
            _client_ping(arguments.port, arguments.count, arguments.warmup)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
