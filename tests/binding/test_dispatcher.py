"""The dispatcher, driven without an event loop: log order in, handlers, framed output out.

Several immortals are wired together by hand: a test takes what one dispatcher wrote to
its output stream for a destination and hands those exact bytes to the destination's
dispatcher, as the coordinator would after logging them. Messages the test injects (as an
outside caller) are built with the dispatcher's own framing functions, and every output is
also decoded with the wire codec, so the two framings are checked against each other.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from ambrosia.binding import codec
from ambrosia.binding.dispatcher import (
    Dispatcher,
    frame_prefix,
    rpc_header,
)
from ambrosia.binding.immortal import (
    Immortal,
    method_table,
    rpc,
)
from ambrosia.binding.immortal import impulse as impulse_method
from ambrosia.errors import (
    BindingError,
    HandlerAwaitError,
    ImpulseDuringRecoveryError,
    RemoteCallError,
)
from ambrosia.protocol.outputs import OutputStream
from ambrosia.wire.messages import (
    KIND_ASYNC,
    KIND_FORK,
    KIND_IMPULSE,
    RESERVED_RESULT,
    Direction,
    IncomingRpc,
    RpcKind,
    decode_messages,
)
from ambrosia.wire.varint import decode_zigzag_long, encode_zigzag_long

# -- the immortals under test ------------------------------------------------------------------


class Server(Immortal):
    def __init__(self) -> None:
        self.log: list[Any] = []

    @rpc
    def note(self, n: int) -> None:
        self.log.append(("note", n))

    @rpc
    def double(self, n: int) -> int:
        self.log.append(("double", n))
        return n * 2

    @rpc
    def fail(self, text: str) -> None:
        raise ValueError(text)

    @rpc
    def reverse(self, data: bytes) -> bytes:
        self.log.append(("reverse", data))
        return data[::-1]

    @rpc
    def pair(self, a: int, b: tuple[int, int]) -> tuple[int, tuple[int, int]]:
        return (a, b)


class Client(Immortal):
    def __init__(self) -> None:
        self.events: list[Any] = []

    def _server(self) -> Any:
        return self.proxy(Server, "bob")

    @rpc
    def tick(self, n: int) -> None:
        self.events.append(("tick", n))

    @rpc
    async def ask(self, n: int) -> int:
        self.events.append(("ask", n))
        value = await self._server().double(n)
        self.events.append(("got", n, value))
        return int(value) + 1

    @rpc
    async def ask_twice(self, n: int) -> None:
        first = await self._server().double(n)
        second = await self._server().double(first)
        self.events.append(("twice", n, first, second))

    @rpc
    async def ask_fail(self, text: str) -> None:
        try:
            await self._server().fail(text)
        except RemoteCallError as error:
            self.events.append(("remote error", error.type_name, error.message))

    @rpc
    async def ask_reverse(self, data: bytes) -> None:
        self.events.append(("reversed", await self._server().reverse(data)))

    @rpc
    async def ask_pair(self) -> None:
        self.events.append(("pair", await self._server().pair(1, (2, 3))))

    @rpc
    async def sleepy(self) -> int:
        self.events.append(("sleepy",))
        await asyncio.sleep(0)
        self.events.append(("sleepy woke",))
        return 1

    @rpc
    async def sleepy_after_call(self) -> None:
        await self._server().double(1)
        self.events.append(("about to sleep",))
        await asyncio.sleep(0)
        self.events.append(("slept",))

    @rpc
    async def raises(self) -> None:
        raise KeyError("nope")

    @rpc
    def spray(self, count: int, size: int) -> None:
        send = self._server().reverse.fork
        for index in range(count):
            send(bytes([index % 256]) * size)
        self.events.append(("sprayed", count))

    @rpc
    def self_call(self, n: int) -> None:
        self.this.tick.fork(n)

    @rpc
    def try_impulse(self) -> None:
        try:
            self.this.poke.impulse(0)
        except BindingError as error:
            self.events.append(("refused", type(error).__name__))

    @impulse_method
    def poke(self, n: int) -> None:
        self.events.append(("poke", n))

    async def on_first_start(self) -> None:
        self.events.append(("first start",))
        self.events.append(("first start got", await self._server().double(21)))


CLIENT = method_table(Client)
SERVER = method_table(Server)


# -- harness -------------------------------------------------------------------------------


class Node:
    """One immortal's dispatcher with real output streams; delivery is up to the test."""

    def __init__(self, name: str, app: Immortal, *, buffer_bytes_max: int = 1 << 20) -> None:
        self.name = name
        self.buffer_bytes_max = buffer_bytes_max
        self.impulses: list[bytes] = []
        self.dispatcher = Dispatcher(name, app, self._open, self.impulses.append)

    def _open(self, destination: str) -> OutputStream:
        return OutputStream(
            destination,
            buffer_bytes_max=self.buffer_bytes_max,
            batch_bytes_max=1 << 16,
            on_dirty=lambda stream: None,
            on_blocked=self.dispatcher.stream_blocked,
            on_unblocked=self.dispatcher.stream_unblocked,
        )

    @property
    def app(self) -> Any:
        return self.dispatcher.app

    def deliver(self, source: str, data: bytes) -> None:
        """Dispatch one logged group completely (no stream may block)."""
        assert self.dispatcher.dispatch(source, data, 0, len(data)) == len(data)

    def take(self, destination: str) -> bytes:
        """Everything written to ``destination`` since the last take, acknowledged."""
        stream = self.dispatcher.stream_for(destination)
        data = b"".join(bytes(segment.data) for segment in stream.take_unsent())
        stream.ack(stream.next_seq)
        # Whatever the dispatcher frames, the wire codec must read as incoming RPCs.
        for message in decode_messages(data, Direction.COORDINATOR_TO_BINDING):
            assert isinstance(message, IncomingRpc)
        return data


def call(method_id: int, kind: int, body: bytes, reserved: int = 0) -> bytes:
    header = rpc_header(method_id, kind, reserved)
    return frame_prefix(len(header) + len(body)) + header + body


def fork(table: dict[str, Any], name: str, *args: Any) -> bytes:
    if len(args) == 1 and type(args[0]) is bytes:
        return call(table[name].method_id, KIND_FORK, b"\x00" + args[0])
    return call(table[name].method_id, KIND_FORK, codec.encode_args(args))


def async_call(table: dict[str, Any], name: str, call_id: int, *args: Any) -> bytes:
    body = encode_zigzag_long(call_id) + codec.encode_args(args)
    return call(table[name].method_id, KIND_ASYNC, body)


def results(data: bytes) -> list[tuple[int, object]]:
    """(call id, value or RemoteCallError) of every result message in ``data``."""
    out: list[tuple[int, object]] = []
    for message in decode_messages(data, Direction.COORDINATOR_TO_BINDING):
        assert isinstance(message, IncomingRpc) and message.reserved == RESERVED_RESULT
        call_id, cursor = decode_zigzag_long(message.args, 0)
        status = message.args[cursor]
        payload = message.args[cursor + 1 :]
        if status == 0:
            out.append((call_id, codec.decode_value(payload, no_proxies)))
        else:
            type_name, text = codec.decode_args(payload, no_proxies)
            out.append((call_id, RemoteCallError(type_name, text)))
    return out


def calls(data: bytes) -> list[IncomingRpc]:
    messages = decode_messages(data, Direction.COORDINATOR_TO_BINDING)
    assert all(isinstance(message, IncomingRpc) for message in messages)
    return [message for message in messages if isinstance(message, IncomingRpc)]


def no_proxies(type_path: str, name: str) -> object:
    raise AssertionError("no proxies expected")


def pair() -> tuple[Node, Node]:
    return Node("alice", Client()), Node("bob", Server())


# -- order and results ---------------------------------------------------------------------------


def test_handlers_run_in_log_order() -> None:
    alice = Node("alice", Client())
    # Mixed encodings and a group boundary in the middle.
    alice.deliver("driver", b"".join(fork(CLIENT, "tick", n) for n in range(1, 26)))
    alice.deliver("driver", b"".join(fork(CLIENT, "tick", n) for n in range(26, 51)))
    assert alice.app.events == [("tick", n) for n in range(1, 51)]
    assert alice.dispatcher.quiescent


def test_sync_results_carry_values_and_errors() -> None:
    bob = Node("bob", Server())
    group = (
        async_call(SERVER, "double", 7, 21)
        + async_call(SERVER, "fail", 8, "bad input")
        + async_call(SERVER, "pair", 9, 4, (5, 6))
        + call(SERVER["reverse"].method_id, KIND_ASYNC, encode_zigzag_long(10) + b"\x00abc")
    )
    bob.deliver("alice", group)
    got = results(bob.take("alice"))
    assert [call_id for call_id, _ in got] == [7, 8, 9, 10]
    assert got[0][1] == 42
    error = got[1][1]
    assert isinstance(error, RemoteCallError)
    assert (error.type_name, error.message) == ("ValueError", "bad input")
    assert got[2][1] == (4, (5, 6))
    assert got[3][1] == b"cba"
    assert bob.dispatcher.handler_errors == 1


def test_awaiting_handler_suspends_and_resumes_when_its_result_is_dispatched() -> None:
    alice, bob = pair()
    alice.deliver(
        "driver",
        fork(CLIENT, "ask", 1)
        + fork(CLIENT, "tick", 2)
        + fork(CLIENT, "ask", 3)
        + fork(CLIENT, "tick", 4),
    )
    # Both asks are suspended; the ticks ran meanwhile.
    assert alice.app.events == [("ask", 1), ("tick", 2), ("ask", 3), ("tick", 4)]
    assert not alice.dispatcher.quiescent
    outgoing = calls(alice.take("bob"))
    assert [(m.method_id, m.rpc_kind) for m in outgoing] == [
        (SERVER["double"].method_id, RpcKind.ASYNC)
    ] * 2
    bob.deliver("alice", b"".join(call(m.method_id, m.rpc_kind, m.args) for m in outgoing))
    answers = bob.take("alice")
    first, second = calls(answers)
    # Results go back one per logged group; other input is logged in between.
    alice.deliver("bob", call(first.method_id, first.rpc_kind, first.args, first.reserved))
    assert alice.app.events[-1] == ("got", 1, 2)
    assert not alice.dispatcher.quiescent
    alice.deliver("driver", fork(CLIENT, "tick", 5))
    alice.deliver("bob", call(second.method_id, second.rpc_kind, second.args, second.reserved))
    assert alice.app.events == [
        ("ask", 1),
        ("tick", 2),
        ("ask", 3),
        ("tick", 4),
        ("got", 1, 2),
        ("tick", 5),
        ("got", 3, 6),
    ]
    assert alice.dispatcher.quiescent
    assert bob.app.log == [("double", 1), ("double", 3)]


def run_scenario() -> tuple[list[Any], list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """A fixed log for alice, fed through bob; returns alice's effects, log and outputs."""
    alice, bob = pair()
    log: list[tuple[str, bytes]] = []
    outputs: list[tuple[str, bytes]] = []

    def feed(source: str, data: bytes) -> None:
        log.append((source, data))
        alice.deliver(source, data)
        for destination in ("bob", "alice"):
            out = alice.take(destination)
            if out:
                outputs.append((destination, out))
                if destination == "bob":
                    bob.deliver("alice", out)
                else:
                    feed("alice", out)  # a self-call is logged as its own group

    feed(
        "driver",
        fork(CLIENT, "ask_twice", 5) + fork(CLIENT, "ask", 1) + fork(CLIENT, "self_call", 9),
    )
    back = bob.take("alice")
    first, second = calls(back)
    feed("bob", call(second.method_id, second.rpc_kind, second.args, second.reserved))
    feed("driver", fork(CLIENT, "ask_fail", "no") + fork(CLIENT, "ask_reverse", b"xyz"))
    feed("bob", call(first.method_id, first.rpc_kind, first.args, first.reserved))
    for _ in range(3):
        back = bob.take("alice")
        if back:
            feed("bob", back)
    return alice.app.events, log, outputs


def test_replay_of_the_same_log_gives_the_same_effects_and_outputs() -> None:
    events, log, outputs = run_scenario()
    assert ("got", 1, 2) in events and ("twice", 5, 10, 20) in events
    assert ("remote error", "ValueError", "no") in events and ("reversed", b"zyx") in events
    assert ("tick", 9) in events
    assert [source for source, _ in log].count("alice") == 1
    # Results are matched by call id, not by order: 'ask 1' got its answer first.
    assert events.index(("got", 1, 2)) < events.index(("twice", 5, 10, 20))
    # Replay: a fresh dispatcher over the same logged groups, nothing else.
    alice = Node("alice", Client())
    replay_outputs = []
    for source, data in log:
        alice.deliver(source, data)
        for destination in ("bob", "alice"):
            out = alice.take(destination)
            if out:
                replay_outputs.append((destination, out))
    assert alice.app.events == events
    assert replay_outputs == outputs
    assert alice.dispatcher.quiescent


def test_async_handler_result_is_sent_when_it_finishes_after_resuming() -> None:
    # dave -> alice.ask (awaited) -> bob.double: alice answers dave only after bob answered.
    alice, bob = pair()
    alice.deliver("dave", async_call(CLIENT, "ask", 77, 4))
    assert alice.take("dave") == b""
    bob.deliver("alice", alice.take("bob"))
    alice.deliver("bob", bob.take("alice"))
    assert results(alice.take("dave")) == [(77, 9)]


def test_async_handler_exception_is_the_callers_remote_error() -> None:
    alice = Node("alice", Client())
    alice.deliver("dave", async_call(CLIENT, "raises", 3))
    ((call_id, error),) = results(alice.take("dave"))
    assert call_id == 3 and isinstance(error, RemoteCallError)
    assert error.type_name == "KeyError"
    assert alice.dispatcher.quiescent


def test_first_start_runs_as_a_logged_call_and_may_await() -> None:
    alice, bob = pair()
    assert not alice.dispatcher.started
    alice.deliver("alice", alice.dispatcher.first_start_message())
    assert alice.dispatcher.started
    assert alice.app.events == [("first start",)]
    bob.deliver("alice", alice.take("bob"))
    alice.deliver("bob", bob.take("alice"))
    assert alice.app.events == [("first start",), ("first start got", 42)]
    assert alice.dispatcher.binding_state() == {"next_call_id": 2, "started": True}
    fresh = Node("alice", Client())
    fresh.dispatcher.restore_binding_state(alice.dispatcher.binding_state())
    assert fresh.dispatcher.next_call_id == 2 and fresh.dispatcher.started


def test_self_calls_go_to_the_own_stream() -> None:
    alice = Node("alice", Client())
    alice.deliver("driver", fork(CLIENT, "self_call", 3))
    assert alice.app.events == []
    alice.deliver("alice", alice.take("alice"))
    assert alice.app.events == [("tick", 3)]


# -- refusals -----------------------------------------------------------------------------------


def test_awaiting_a_foreign_awaitable_is_refused_and_dispatch_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    alice, bob = pair()
    caplog.set_level(logging.ERROR, logger="ambrosia.binding")
    alice.deliver(
        "driver",
        fork(CLIENT, "sleepy")
        + fork(CLIENT, "tick", 1)
        + async_call(CLIENT, "sleepy", 5)
        + fork(CLIENT, "sleepy_after_call")
        + fork(CLIENT, "tick", 2),
    )
    assert alice.app.events == [("sleepy",), ("tick", 1), ("sleepy",), ("tick", 2)]
    assert sum("awaited" in record.getMessage() for record in caplog.records) == 2
    ((call_id, error),) = results(alice.take("driver"))
    assert call_id == 5 and isinstance(error, RemoteCallError)
    assert error.type_name == HandlerAwaitError.__name__
    # Refused after resuming too.
    bob.deliver("alice", alice.take("bob"))
    alice.deliver("bob", bob.take("alice"))
    assert alice.app.events[-1] == ("about to sleep",)
    assert sum("awaited" in record.getMessage() for record in caplog.records) == 3
    assert alice.dispatcher.quiescent
    alice.deliver("driver", fork(CLIENT, "tick", 3))
    assert alice.app.events[-1] == ("tick", 3)


def test_malformed_messages_are_skipped_the_same_way_every_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="ambrosia.binding")
    ok = fork(CLIENT, "tick", 1)
    later = fork(CLIENT, "tick", 9)
    bad_tag = call(CLIENT["tick"].method_id, KIND_FORK, b"\x07[1]")
    unused_id = min(set(range(1, 8001)) - {info.method_id for info in CLIENT.values()})
    unknown_method = call(unused_id, KIND_FORK, codec.encode_args((1,)))
    bad_json = call(CLIENT["tick"].method_id, KIND_FORK, b"\x01[1")
    not_rpc = b"\x08" + b"\x05\x00\x02\x01"  # type 5, not an RPC
    too_short = b"\x04\x00\x00"  # size 2: below the fixed RPC head
    truncated = ok[:-1]
    cases = {
        # A message whose arguments do not decode is skipped alone.
        "bad tag": (ok + bad_tag + later, [("tick", 1), ("tick", 9)]),
        "bad json": (ok + bad_json + later, [("tick", 1), ("tick", 9)]),
        "unknown method": (ok + unknown_method + later, [("tick", 1), ("tick", 9)]),
        # A message that cannot be framed ends the group: nothing after it can be trusted.
        "not an rpc": (ok + not_rpc + later, [("tick", 1)]),
        "too short": (ok + too_short + later, [("tick", 1)]),
        "truncated": (ok + truncated, [("tick", 1)]),
    }
    for name, (group, expected) in cases.items():
        for _ in range(2):  # the original run and a replay
            alice = Node("alice", Client())
            caplog.clear()
            alice.deliver("driver", group)
            assert alice.app.events == expected, name
            assert caplog.records, f"{name}: nothing was reported"
            # The dispatcher still works afterwards.
            alice.deliver("driver", fork(CLIENT, "tick", 10))
            assert alice.app.events[-1] == ("tick", 10)


def test_impulses_only_from_a_primary_outside_handlers() -> None:
    alice = Node("alice", Client())
    poke = alice.app.this.poke
    with pytest.raises(ImpulseDuringRecoveryError):
        poke.impulse(1)  # not primary yet
    alice.dispatcher.is_primary = True
    alice.dispatcher.replaying = True
    with pytest.raises(ImpulseDuringRecoveryError):
        poke.impulse(1)
    assert alice.impulses == []
    alice.dispatcher.replaying = False
    poke.impulse(2)
    poke.impulse(3)
    assert len(alice.impulses) == 2
    for message in alice.impulses:
        (decoded,) = calls(message)
        assert decoded.rpc_kind == RpcKind.IMPULSE
    alice.deliver("@impulses", b"".join(alice.impulses))
    assert alice.app.events == [("poke", 2), ("poke", 3)]
    # Inside a handler an impulse is refused (use a fork there).
    alice.deliver("driver", fork(CLIENT, "try_impulse"))
    assert alice.app.events[-1] == ("refused", "BindingError")
    assert len(alice.impulses) == 2
    # Only through the immortal's own proxy, only on @impulse methods.
    with pytest.raises(BindingError):
        alice.app.proxy(Client, "carol").poke.impulse(1)
    with pytest.raises(BindingError):
        alice.app.this.tick.impulse(1)
    # An impulse message dispatched like any input (kind IMPULSE) runs the handler.
    alice.deliver(
        "@impulses", call(CLIENT["poke"].method_id, KIND_IMPULSE, codec.encode_args((4,)))
    )
    assert alice.app.events[-1] == ("poke", 4)


def test_calls_outside_handlers_are_refused() -> None:
    alice = Node("alice", Client())
    server = alice.app.proxy(Server, "bob")
    with pytest.raises(BindingError):
        server.note.fork(1)
    with pytest.raises(BindingError):
        server.reverse.fork(b"raw")  # the raw fast path checks too
    with pytest.raises(BindingError):
        server.double(1)
    with pytest.raises(BindingError):
        alice.app.this.poke.fork(1)  # impulse methods are not forked
    assert alice.dispatcher.stream_for("bob").next_seq == 0
    assert alice.dispatcher.next_call_id == 1


# -- back-pressure ---------------------------------------------------------------------------------


def test_a_full_stream_stops_dispatch_at_a_message_boundary() -> None:
    alice = Node("alice", Client(), buffer_bytes_max=1000)
    first = fork(CLIENT, "spray", 30, 100)  # ~3 KB of output: over the bound
    group = (
        first + fork(CLIENT, "tick", 1) + fork(CLIENT, "spray", 5, 100) + fork(CLIENT, "tick", 2)
    )
    dispatcher = alice.dispatcher
    position = dispatcher.dispatch("driver", group, 0, len(group))
    assert position == len(first)
    assert alice.app.events == [("sprayed", 30)]
    assert dispatcher.blocked and not dispatcher.unblocked.is_set()
    # Nothing runs while blocked... and acknowledgements unblock it.
    stream = dispatcher.stream_for("bob")
    stream.take_unsent()
    stream.ack(stream.next_seq)
    assert dispatcher.unblocked.is_set() and not dispatcher.blocked
    position = dispatcher.dispatch("driver", group, position, len(group))
    assert alice.app.events == [("sprayed", 30), ("tick", 1), ("sprayed", 5), ("tick", 2)]
    assert position == len(group)
    # The receiver gets every sprayed message in order.
    bob = Node("bob", Server())
    bob.deliver("alice", alice.take("bob"))
    assert [len(entry[1]) for entry in bob.app.log] == [100] * 5
    assert stream.next_seq == 35


def test_blocking_stops_after_a_handler_that_suspended() -> None:
    alice = Node("alice", Client(), buffer_bytes_max=10)
    first = fork(CLIENT, "ask", 1)
    group = first + fork(CLIENT, "tick", 2)
    position = alice.dispatcher.dispatch("driver", group, 0, len(group))
    assert position == len(first)
    assert alice.app.events == [("ask", 1)]
    stream = alice.dispatcher.stream_for("bob")
    stream.take_unsent()
    stream.ack(stream.next_seq)
    assert alice.dispatcher.dispatch("driver", group, position, len(group)) == len(group)
    assert alice.app.events == [("ask", 1), ("tick", 2)]


# -- known bugs: a logged message must never stop the dispatcher --------------------------------


def test_wrong_arity_call_to_an_async_handler_is_reported_not_raised() -> None:
    alice = Node("alice", Client())
    alice.deliver("driver", fork(CLIENT, "ask", 1, 2) + fork(CLIENT, "tick", 3))
    assert alice.app.events[-1] == ("tick", 3)


def test_undecodable_result_is_skipped() -> None:
    alice = Node("alice", Client())
    alice.deliver("driver", fork(CLIENT, "ask", 1))
    bad = call(0, KIND_ASYNC, encode_zigzag_long(1) + b"\x00\x09zz", RESERVED_RESULT)
    alice.deliver("bob", bad + fork(CLIENT, "tick", 2))
    assert alice.app.events[-1] == ("tick", 2)


def test_malformed_error_result_is_skipped() -> None:
    alice = Node("alice", Client())
    alice.deliver("driver", fork(CLIENT, "ask", 1))
    bad = call(
        0, KIND_ASYNC, encode_zigzag_long(1) + b"\x01" + codec.encode_args((1,)), RESERVED_RESULT
    )
    alice.deliver("bob", bad + fork(CLIENT, "tick", 2))
    assert alice.app.events[-1] == ("tick", 2)
