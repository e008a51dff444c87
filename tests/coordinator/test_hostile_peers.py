"""Authenticated but hostile peers (issue 8, cases 2, 5 and 6) over real sockets: each
can cost only its own connection, and a real pair keeps working exactly once.

The hostile peer is a test script speaking the peer protocol with ``ambrosia.wire``
under a registered name (what mutual TLS cannot rule out: a buggy or compromised
instance).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

import pytest
from coordinator_peers import Pair, Recorder, forget

from ambrosia.binding import codec
from ambrosia.binding.immortal import method_table
from ambrosia.coordinator.runtime import Config
from ambrosia.wire.messages import (
    PEER_PROTOCOL_VERSION,
    DataBatch,
    Direction,
    Hello,
    IncomingRpc,
    ReplayFrom,
    RpcKind,
    decode_message,
    encode,
)
from ambrosia.wire.varint import encode_zigzag_int, encode_zigzag_long

# A liveness limit: each scenario takes a few seconds here, loaded or not.
DEADLINE_S = 90


def run(scenario: Callable[[], object]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), DEADLINE_S))  # type: ignore[arg-type]


class Peer:
    """A script playing instance ``name`` toward ``receiver`` on one connection."""

    def __init__(self, name: str, port: int, receiver: str = "server", epoch: int = 1) -> None:
        self.name = name
        self.port = port
        self.receiver = receiver
        self.epoch = epoch
        self.next_seq = 1
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> ReplayFrom:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(
            encode(Hello(PEER_PROTOCOL_VERSION, self.name, self.receiver, self.epoch))
        )
        answer = await self.reader.readexactly(2)  # size + type ...
        size = answer[0] >> 1
        answer += await self.reader.readexactly(size - 1)
        replay = decode_message(answer, Direction.COORDINATOR_TO_COORDINATOR)
        assert isinstance(replay, ReplayFrom)
        self.next_seq = replay.total + 1
        return replay

    def send(self, messages: list[bytes]) -> None:
        assert self.writer is not None
        payload = b"".join(messages)
        self.writer.write(encode(DataBatch(self.next_seq, len(messages), len(messages), payload)))
        self.next_seq += len(messages)

    async def closed_by_peer(self) -> bool:
        assert self.reader is not None
        try:
            while await asyncio.wait_for(self.reader.read(65536), DEADLINE_S):
                pass
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def result(call_id: int, value: object) -> bytes:
    body = encode_zigzag_long(call_id) + b"\x00" + codec.encode_value(value)
    return encode(IncomingRpc(0, RpcKind.ASYNC, body, reserved=1))


def awaited_call(method: str, call_id: int, *args: object) -> bytes:
    method_id = method_table(Recorder)[method].method_id
    body = encode_zigzag_long(call_id) + codec.encode_args(args)
    return encode(IncomingRpc(method_id, RpcKind.ASYNC, body))


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S / 2
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def test_results_are_accepted_only_from_the_instance_called(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Case 2: with the server down, "mallory" answers the client's awaited calls."""
    caplog.set_level(logging.ERROR, logger="ambrosia.binding")
    total = 40

    async def scenario() -> None:
        name = f"routing-{uuid.uuid4().hex}"
        pair = Pair(name)
        pair.peers.registered.add("mallory")
        try:
            await pair.start()
            assert pair.server is not None and pair.client is not None
            await pair.server.stop()
            pair.peers.ports.pop("server")
            pair.begin(total=total, per_step=10)
            client = pair.client
            assert client.dispatcher is not None
            pending = client.dispatcher._pending
            await wait_for(lambda: bool(pending), "an awaited call")
            forged = [result(call_id, 999) for call_id in sorted(pending)]
            mallory = Peer("mallory", client.bound_port, receiver="client")
            await mallory.connect()
            mallory.send(forged)
            await wait_for(
                lambda: client.delivered.get("mallory", 0) == len(forged), "forged results"
            )
            mallory.close()
            # Logged (well-formed), but refused by the dispatcher: nobody resumed.
            assert pending and all(call.destination == "server" for call in pending.values())
            assert any("that call went to server" in r.getMessage() for r in caplog.records)
            pair.server = await pair.start_runtime("server", Recorder)
            await pair.wait(lambda: pair.finished(total), DEADLINE_S / 2, "the real results")
            pair.check_exactly_once(total)  # no 999 among the results
        finally:
            await pair.stop()
            forget(name)

    run(scenario)


def test_a_peer_that_reads_no_results_stalls_only_itself() -> None:
    """Case 5: "ghost" floods awaited calls and never reads a result."""
    total = 600
    config = Config(checkpoint_log_bytes=1 << 20, output_buffer_bytes_max=16 * 1024)

    async def scenario() -> None:
        name = f"ghost-{uuid.uuid4().hex}"
        pair = Pair(name, config)
        pair.peers.registered.add("ghost")  # registered, never listening: results pile up
        try:
            await pair.start()
            assert pair.server is not None
            server = pair.server
            ghost = Peer("ghost", server.bound_port)
            await ghost.connect()
            padding = "x" * 200
            for call_id in range(1, 2001, 100):
                ghost.send(
                    [awaited_call("answer", n, padding) for n in range(call_id, call_id + 100)]
                )
            stream = server.streams
            await wait_for(
                lambda: "ghost" in stream and stream["ghost"].blocked, "the ghost's results"
            )
            await wait_for(lambda: server.incoming["ghost"].held, "the ghost's input held")
            pair.begin(total=total, per_step=10)
            await pair.wait(lambda: pair.finished(total), DEADLINE_S / 3, "the real client")
            pair.check_exactly_once(total)
            assert server.incoming["ghost"].held
            bound = config.output_buffer_bytes_max
            # One bound, plus what was logged before the hold: never the whole flood.
            assert stream["ghost"].buffered_bytes < 2000 * 200
            assert stream["ghost"].buffered_bytes > bound
            ghost.close()
            # A restart replays the ghost's calls and regenerates their results: it must
            # still become primary (start_runtime waits for that) and serve the client.
            await server.stop()
            pair.server = await pair.start_runtime("server", Recorder)
            assert pair.server.failure is None
        finally:
            await pair.stop()
            forget(name)

    run(scenario)


def test_connections_handshakes_and_slow_frames_are_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Case 6: too many connections, no Hello, a frame that never completes, silence;
    a stale epoch; buffers that do not cost a frame limit per idle connection."""
    caplog.set_level(logging.WARNING, logger="ambrosia.links")
    total = 200
    config = Config(
        checkpoint_log_bytes=1 << 20,
        incoming_connections_max=6,
        # Short enough to wait out, long enough that the real pair never meets them on a
        # loaded machine: the idle deadline is 30 keepalive intervals.
        handshake_timeout_s=1.0,
        incoming_frame_timeout_s=1.0,
        incoming_idle_timeout_s=3.0,
        keepalive_interval_s=0.1,
    )

    def closings(phrase: str) -> int:
        return sum(phrase in r.getMessage() for r in caplog.records)

    async def scenario() -> None:
        name = f"limits-{uuid.uuid4().hex}"
        pair = Pair(name, config)
        pair.peers.registered.update({"loris", "silent", "old"})
        try:
            await pair.start()
            assert pair.server is not None
            server = pair.server
            pair.begin(total=total, per_step=10)
            await pair.wait(lambda: pair.finished(total), DEADLINE_S / 3, "the client")
            # Idle connections cost a small buffer each, not a frame limit's worth.
            idle = [await asyncio.open_connection("127.0.0.1", server.bound_port)]
            await wait_for(lambda: len(server.connections) == 2, "the idle connection")
            assert all(len(link.reader.buffer) <= 64 * 1024 for link in server.connections)
            # No Hello: closed at the handshake deadline.
            await wait_for(lambda: closings("no Hello within") == 1, "the handshake deadline")
            # Beyond the limit: closed at once.
            idle = [await asyncio.open_connection("127.0.0.1", server.bound_port) for _ in range(8)]
            await wait_for(lambda: closings("too many peer connections") >= 3, "the limit")
            for _, writer in idle:
                writer.close()
            await wait_for(lambda: len(server.connections) == 1, "the idle ones gone")
            # Slow loris: a frame that trickles in a byte at a time never completes.
            loris = Peer("loris", server.bound_port)
            await loris.connect()
            assert loris.writer is not None
            loris.writer.write(encode_zigzag_int(1000))
            deadline = time.monotonic() + DEADLINE_S / 2
            while closings("made no progress") == 0:
                loris.writer.write(b"\x11")
                await asyncio.sleep(0.05)
                assert time.monotonic() < deadline, "the trickling frame was never cut off"
            # Closed for that reason alone: no other deadline or refusal ended it first.
            assert closings("closing connection from loris") == 1, caplog.text
            loris.close()
            # Silence after the handshake: closed at the idle deadline.
            silent = Peer("silent", server.bound_port)
            await silent.connect()
            assert await silent.closed_by_peer()
            assert closings("nothing received for") == 1
            # A stale primary of a peer: an epoch lower than one already admitted.
            newer = Peer("old", server.bound_port, epoch=5)
            await newer.connect()
            stale = Peer("old", server.bound_port, epoch=3)
            with pytest.raises((asyncio.IncompleteReadError, ConnectionResetError)):
                await stale.connect()
            assert closings("stale epoch 3") == 1
            newer.close()
            stale.close()
            # The idle but healthy client link survived every deadline (keepalives), and
            # the pair still works.
            client_link = server.incoming["client"]
            pair.sender().done = False
            pair.sender().this.begin.impulse("server", total * 2, 10)
            await pair.wait(lambda: pair.finished(total * 2), DEADLINE_S / 3, "more calls")
            assert server.incoming["client"] is client_link and not client_link.closed
            assert closings("closing connection from client") == 0
        finally:
            await pair.stop()
            forget(name)

    run(scenario)
