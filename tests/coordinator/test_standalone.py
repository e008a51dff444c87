"""A scripted fake binding against a real ``ambrosia coordinator`` process, byte by byte.

The fake binding is plain blocking sockets and hand-built bytes (its own varints, its own
record parser, its own xxHash check), so it checks the coordinator against PROTOCOL.md,
not against our own codec. It drives the sequences a binding goes through:

- first start: TakeBecomingPrimaryCheckpoint; InitialMessage and Checkpoint back; the
  InitialMessage comes back in a log page (logged first, then echoed); a TakeCheckpoint
  after it;
- normal processing: a self-call and an impulse come back in durable pages, each group
  behind a source marker naming its sender;
- a second binding while one is attached: refused, and the reason logged;
- standalone recovery (a new binding after the first went away): the latest checkpoint
  (record -2, its bytes right after), the replayed pages, TakeBecomingPrimaryCheckpoint;
  the binding answers with a Checkpoint and goes on.

Bad input: garbage, an unknown type, type 13, a Checkpoint shorter than announced, a
disconnect inside an RPCBatch: each is logged with what was wrong; the coordinator keeps
running, nothing of the broken message is logged, and the next binding recovers from
the log with every page the previous one completed.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash

from ambrosia.binding import codec
from ambrosia.binding.immortal import method_table
from ambrosia.testing.harness import Deployment, free_port
from ambrosia.testing.workloads import ChainServer

LIVENESS_S = 60.0
HEADER = struct.Struct("<iiQq")
SOURCE_MARKER_HEAD = bytes((0, 0, 3, 1))  # type 0, reserved 0, method id -2, kind fork


def varint(value: int) -> bytes:
    """ZigZag, then base-128 little-endian (PROTOCOL.md: sizes are zig-zag too)."""
    value = (value << 1) ^ (value >> 63)
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(data: bytes, position: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return (result >> 1) ^ -(result & 1), position


def message(message_type: int, data: bytes = b"") -> bytes:
    return varint(len(data) + 1) + bytes((message_type,)) + data


def incoming_rpc(method: int, kind: int, args: bytes) -> bytes:
    return message(0, bytes((0,)) + varint(method) + bytes((kind,)) + args)


def outgoing_rpc(destination: str, method: int, kind: int, args: bytes) -> bytes:
    name = destination.encode()
    return message(
        0, varint(len(name)) + name + bytes((0,)) + varint(method) + bytes((kind,)) + args
    )


def impulse(args: bytes) -> bytes:
    """Outside input: an impulse to self, method 7."""
    return outgoing_rpc("", 7, 2, args)


def checkpoint(state: bytes) -> bytes:
    return message(8, varint(len(state))) + state


class FakeBinding:
    """One binding's two connections: to the receive port, then to the send port."""

    def __init__(self, receive_port: int, send_port: int) -> None:
        deadline = time.monotonic() + LIVENESS_S
        while True:
            try:
                self.to_coordinator = socket.create_connection(("127.0.0.1", receive_port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.from_coordinator = socket.create_connection(("127.0.0.1", send_port))
        for sock in (self.to_coordinator, self.from_coordinator):
            sock.settimeout(LIVENESS_S)
        self.committer_id: int | None = None

    def send(self, data: bytes) -> None:
        self.to_coordinator.sendall(data)

    def read_exactly(self, count: int) -> bytes:
        data = bytearray()
        while len(data) < count:
            piece = self.from_coordinator.recv(count - len(data))
            assert piece, f"the coordinator closed the connection ({len(data)} of {count})"
            data += piece
        return bytes(data)

    def record(self) -> tuple[int, bytes]:
        """The next log record: (sequence id, body); header fields checked."""
        header = self.read_exactly(HEADER.size)
        committer_id, size, check, sequence = HEADER.unpack(header)
        if self.committer_id is None:
            self.committer_id = committer_id
        assert committer_id == self.committer_id, "the committer id is constant"
        body = self.read_exactly(size - HEADER.size)
        assert xxhash.xxh64_intdigest(body) == check, "check bytes: xxHash64 of the body"
        return sequence, body

    def control(self) -> bytes:
        sequence, body = self.record()
        assert sequence == -1, f"expected a made-up record, got page {sequence}"
        return body

    def page(self) -> tuple[int, list[tuple[str, bytes]]]:
        """A page record: its sequence and its (sender, messages) groups."""
        sequence, body = self.record()
        assert sequence >= 0, f"expected a log page, got record {sequence}"
        return sequence, _groups(body)

    def messages_until_control(self) -> tuple[list[tuple[str, bytes]], bytes]:
        """Every group of the pages before the next made-up record, and that record."""
        groups: list[tuple[str, bytes]] = []
        while True:
            sequence, body = self.record()
            if sequence == -1:
                return groups, body
            assert sequence >= 0
            groups += _groups(body)

    def closed_by_coordinator(self) -> bool:
        try:
            return self.to_coordinator.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            return True

    def close(self) -> None:
        for sock in (self.to_coordinator, self.from_coordinator):
            sock.close()


def _groups(body: bytes) -> list[tuple[str, bytes]]:
    groups = []
    position = 0
    while position < len(body):
        size, start = read_varint(body, position)
        marker = body[start : start + size]
        assert marker.startswith(SOURCE_MARKER_HEAD), marker.hex()
        length, name_at = read_varint(marker, len(SOURCE_MARKER_HEAD))
        stop = start + size
        groups.append((marker[name_at:].decode(), body[stop : stop + length]))
        position = stop + length
    return groups


TAKE_CHECKPOINT = message(2)
TAKE_BECOMING_PRIMARY_CHECKPOINT = message(11)


def wait_for_text(deployment: Deployment, label: str, text: str, count: int = 1) -> str:
    deadline = time.monotonic() + LIVENESS_S
    while time.monotonic() < deadline:
        output = deployment.output(label)
        if output.count(text) >= count:
            return output
        deployment.check_exit(label)
        time.sleep(0.05)
    raise AssertionError(f"{label} never printed {text!r}; it printed:\n{deployment.output(label)}")


@pytest.fixture(params=["flags", "registered"])
def coordinator(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Deployment, int, int]]:
    """``ambrosia coordinator solo`` on two known ports: given as flags, or registered
    (``ambrosia register --receive-port/--send-port``) and found in the catalog."""
    deployment = Deployment(tmp_path)
    receive_port, send_port = free_port(), free_port()
    ports = ("--receive-port", str(receive_port), "--send-port", str(send_port))
    registered = request.param == "registered"
    deployment.register(
        "solo", "ambrosia.testing.workloads:ChainServer", args=ports if registered else ()
    )
    deployment.start("solo", subcommand="coordinator", args=() if registered else ports)
    try:
        yield deployment, receive_port, send_port
    finally:
        code = deployment.terminate("solo")
        deployment.stop_all()
    assert code == 0, deployment.output("solo")
    assert deployment.log_findings() == []


def first_start(binding: FakeBinding) -> None:
    """TakeBecomingPrimaryCheckpoint; InitialMessage and Checkpoint; the echo; a checkpoint."""
    assert binding.control() == TAKE_BECOMING_PRIMARY_CHECKPOINT
    binding.send(message(9, b"hello, coordinator") + checkpoint(b"state-0"))
    _, groups = binding.page()
    assert groups == [("solo", message(9, b"hello, coordinator"))]
    assert binding.control() == TAKE_CHECKPOINT
    # What the first start's handler sent (a self-call), then the state after it.
    binding.send(outgoing_rpc("", 5, 1, b"self-call") + checkpoint(b"state-1"))
    assert binding.page()[1] == [("solo", incoming_rpc(5, 1, b"self-call"))]


def test_first_start_normal_processing_refusal_and_recovery(
    coordinator: tuple[Deployment, int, int],
) -> None:
    deployment, receive_port, send_port = coordinator
    binding = FakeBinding(receive_port, send_port)
    first_start(binding)

    # An impulse (outside input, sent whenever): logged, then delivered.
    binding.send(impulse(b"tick"))
    assert binding.page()[1] == [("@impulses", incoming_rpc(7, 2, b"tick"))]
    delivered = [
        ("solo", incoming_rpc(5, 1, b"self-call")),
        ("@impulses", incoming_rpc(7, 2, b"tick")),
    ]

    # A second binding while one is attached: refused, the reason logged.
    intruder = socket.create_connection(("127.0.0.1", receive_port))
    intruder.settimeout(LIVENESS_S)
    assert intruder.recv(1) == b""
    intruder.close()
    wait_for_text(deployment, "solo", "a binding is already attached")

    # The binding goes away; the next one recovers: checkpoint 1, then the replay.
    binding.close()
    wait_for_text(deployment, "solo", "binding lost: the binding disconnected")
    binding = FakeBinding(receive_port, send_port)
    sequence, body = binding.record()
    assert (sequence, body) == (-2, message(8, varint(len(b"state-1"))))
    assert binding.read_exactly(len(b"state-1")) == b"state-1"
    replayed, asked = binding.messages_until_control()
    assert sorted(replayed) == sorted(delivered), "the pages after checkpoint 1, again"
    assert asked == TAKE_BECOMING_PRIMARY_CHECKPOINT
    binding.send(checkpoint(b"state-2"))
    binding.send(impulse(b"after recovery"))
    assert binding.page()[1] == [("@impulses", incoming_rpc(7, 2, b"after recovery"))]
    binding.close()


BAD_INPUTS = [
    ("garbage", b"\xff" * 12, "varint"),
    ("unknown type", message(99, b"x"), "type 99"),
    ("type 13", message(13, varint(1) + varint(1) + incoming_rpc(5, 1, b"z")), "type 13"),
    ("short checkpoint", message(8, varint(100)) + b"only ten b", "inside a checkpoint"),
    (
        "cut batch",
        message(5, varint(2) + outgoing_rpc("", 5, 1, b"one") + outgoing_rpc("", 5, 1, b"two"))[
            :-3
        ],
        "inside a message",
    ),
]


def test_bad_input_loses_the_binding_and_the_next_one_recovers_everything(
    coordinator: tuple[Deployment, int, int],
) -> None:
    deployment, receive_port, send_port = coordinator
    binding = FakeBinding(receive_port, send_port)
    first_start(binding)
    logged = [
        ("solo", incoming_rpc(5, 1, b"self-call")),
        ("@impulses", incoming_rpc(7, 2, b"before the bad input")),
    ]
    binding.send(impulse(b"before the bad input"))
    assert binding.page()[1] == logged[1:]
    state = b"state-1"
    for life, (what, data, reason) in enumerate(BAD_INPUTS, start=1):
        binding.send(data)
        binding.to_coordinator.shutdown(socket.SHUT_WR)  # the stream ends after it
        output = wait_for_text(deployment, "solo", "binding lost: binding protocol: ", life)
        assert reason in output.split("binding lost:")[-1], (what, output[-800:])
        binding.close()
        # The next binding: the checkpoint, every complete page, nothing of the bad input.
        binding = FakeBinding(receive_port, send_port)
        sequence, body = binding.record()
        assert (sequence, body) == (-2, message(8, varint(len(state)))), what
        assert binding.read_exactly(len(state)) == state
        replayed, asked = binding.messages_until_control()
        assert replayed == logged, what
        assert asked == TAKE_BECOMING_PRIMARY_CHECKPOINT
        state = f"state-after-{life}".encode()
        binding.send(checkpoint(state))
        # Logged from here on: replay starts after this checkpoint next time.
        logged = [("@impulses", incoming_rpc(7, 2, f"life {life}".encode()))]
        binding.send(impulse(f"life {life}".encode()))
        assert binding.page()[1] == logged, what
    assert deployment.output("solo").count("binding lost") == len(BAD_INPUTS)
    binding.close()


def result_rpc(destination: str, call_id: int, value: object) -> bytes:
    """The result of an async call, as the Python binding's callers expect it."""
    name = destination.encode()
    head = varint(len(name)) + name + bytes((1,)) + varint(0) + bytes((0,))
    return message(0, head + varint(call_id) + b"\x00" + codec.encode_value(value))


def serve_chain_calls(binding: FakeBinding, total: int, state: bytes) -> list[int]:
    """Act as the chain's server until call ``total``: answer awaited calls (also the
    replayed ones: a binding regenerates its output), answer checkpoint requests."""
    methods = {info.method_id: name for name, info in method_table(ChainServer).items()}
    seen: list[int] = []
    while not seen or seen[-1] < total:
        sequence, body = binding.record()
        if sequence < 0:
            assert body in (TAKE_CHECKPOINT, TAKE_BECOMING_PRIMARY_CHECKPOINT), body.hex()
            binding.send(checkpoint(state))
            continue
        for source, group in _groups(body):
            assert source == "client", source
            position = 0
            while position < len(group):
                size, start = read_varint(group, position)
                method, kind_at = read_varint(group, start + 2)
                arguments = group[kind_at + 1 : start + size]
                if group[kind_at] == 0:  # awaited: a call id, then the arguments
                    call_id, at = read_varint(arguments, 0)
                    (n,) = codec.decode_args(arguments[at:], lambda *_: None)
                    binding.send(result_rpc("client", call_id, n * 2))
                else:
                    (n,) = codec.decode_args(arguments, lambda *_: None)
                assert methods[method] in ("record", "record_fork")
                seen.append(n)
                position = start + size
    return seen


def test_the_coordinator_keeps_its_peers_across_a_lost_binding(tmp_path: Path) -> None:
    total = 30
    deployment = Deployment(tmp_path, env={"AMBROSIA_CHAIN_TOTAL": str(total)})
    deployment.register("server", "ambrosia.testing.workloads:ChainServer")
    deployment.register("client", "ambrosia.testing.workloads:ChainClient")
    receive_port, send_port = free_port(), free_port()
    deployment.start(
        "server",
        subcommand="coordinator",
        args=("--receive-port", str(receive_port), "--send-port", str(send_port)),
    )
    try:
        binding = FakeBinding(receive_port, send_port)
        assert binding.control() == TAKE_BECOMING_PRIMARY_CHECKPOINT
        binding.send(message(9, b"server") + checkpoint(b"s0"))
        assert binding.page()[1] == [("server", message(9, b"server"))]
        deployment.start("client")
        first = serve_chain_calls(binding, total // 2, b"s1")
        assert first == list(range(1, len(first) + 1))
        # Garbage: this binding is lost; the client keeps calling meanwhile (its calls
        # are logged and acknowledged without a binding), the next binding catches up.
        binding.send(b"\xff" * 12)
        wait_for_text(deployment, "server", "binding lost: binding protocol")
        binding.close()
        binding = FakeBinding(receive_port, send_port)
        sequence, body = binding.record()
        assert sequence == -2
        (length, _) = read_varint(body, 2)
        binding.read_exactly(length)
        second = serve_chain_calls(binding, total, b"s2")
        # From the checkpoint on, in order, each call once, through the last one.
        assert second == list(range(second[0], total + 1))
        assert second[0] <= first[-1] + 1
        deadline = time.monotonic() + LIVENESS_S
        while not (deployment.status("client") or {}).get("done"):
            assert time.monotonic() < deadline, deployment.output("client")
            deployment.check_exit("client")
            time.sleep(0.05)
        status = deployment.status("client")
        assert status is not None and status["bad_results"] == []
        assert status["results"] == len([n for n in range(1, total + 1) if n % 3 == 0])
        binding.close()
    finally:
        codes = [deployment.terminate(name) for name in ("client", "server")]
        deployment.stop_all()
    assert codes == [0, 0], deployment.output("server")
    assert deployment.log_findings() == []
