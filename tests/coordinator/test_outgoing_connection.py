"""The sender's socket writer over real TCP: order, back-pressure, partial sends, close.

The receiving end is a plain socket the test reads (or does not read) itself, so the
kernel's buffers really fill and ``sendmsg`` really sends partially.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

from coordinator_peers import LIVENESS_S

from ambrosia.coordinator.links import (
    OutgoingConnection,
    _connect,
    _unsent_views,
)
from ambrosia.wire.messages import Direction, Hello, decode_message_body
from ambrosia.wire.varint import decode_zigzag_int


@dataclass
class _Config:
    socket_buffer_bytes: int


@dataclass
class _Stream:
    destination: str = "receiver"
    acked_through: int = 0


@dataclass
class _Link:
    """The connection's owner: counts the flushes the connection asks for."""

    config: _Config
    sender: str = "sender"
    epoch: int = 1
    stream: _Stream = field(default_factory=_Stream)
    protocol: OutgoingConnection | None = None
    flushes: int = 0

    def flush(self) -> None:
        self.flushes += 1

    def acked(self, seq: int) -> None:
        raise AssertionError("no acknowledgements in these tests")


def test_unsent_views_skip_what_was_sent() -> None:
    buffers = (b"abc", bytearray(b"defgh"), memoryview(b"ij"))
    assert [bytes(view) for view in _unsent_views(buffers, 0)] == [b"abc", b"defgh", b"ij"]
    assert [bytes(view) for view in _unsent_views(buffers, 3)] == [b"defgh", b"ij"]
    assert [bytes(view) for view in _unsent_views(buffers, 5)] == [b"fgh", b"ij"]
    assert [bytes(view) for view in _unsent_views(buffers, 9)] == [b"j"]
    assert _unsent_views(buffers, 10) == []


async def _pair(limit: int) -> tuple[OutgoingConnection, _Link, socket.socket, socket.socket]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    host, port = listener.getsockname()
    loop = asyncio.get_running_loop()
    sock = await _connect(loop, host, port)
    peer, _ = listener.accept()
    link = _Link(_Config(limit))
    connection = OutgoingConnection(link, sock)  # type: ignore[arg-type]
    assert link.protocol is connection
    return connection, link, peer, listener


async def _read_exactly(peer: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    peer.setblocking(False)
    parts = bytearray()
    while len(parts) < size:
        chunk = await loop.sock_recv(peer, min(1 << 20, size - len(parts)))
        assert chunk, "connection closed early"
        parts += chunk
    return bytes(parts)


def _strip_hello(data: bytes) -> bytes:
    size, start = decode_zigzag_int(data, 0)
    hello = decode_message_body(
        memoryview(data)[start : start + size], Direction.COORDINATOR_TO_COORDINATOR
    )
    assert isinstance(hello, Hello)
    assert (hello.sender, hello.receiver, hello.sender_epoch) == ("sender", "receiver", 1)
    return data[start + size :]


def test_bytes_arrive_in_order_through_back_pressure() -> None:
    async def scenario() -> None:
        limit = 2 << 20
        connection, link, peer, listener = await _pair(limit)
        try:
            # 24 MiB in buffers of varied sizes, while nobody reads: the kernel's buffers
            # fill, sends go partial, the queue passes the limit and writable drops.
            pieces = [
                bytes([index % 251]) * (1000 + 7919 * index % 300_000) for index in range(160)
            ]
            expected = b"".join(pieces)
            sent = 0
            for index in range(0, len(pieces), 2):
                connection.send(pieces[index], bytearray(pieces[index + 1]))
                sent += 2
                if not connection.writable:
                    break
            assert not connection.writable, "the queue never passed its limit"
            assert connection._queued_bytes > limit
            # Reading drains the queue: writable comes back and the link is asked to flush.
            head = await _read_exactly(peer, 64)
            received = bytearray(head)
            while not connection.writable:
                received += await _read_exactly(peer, 1 << 20)
            assert link.flushes >= 1
            for index in range(sent, len(pieces)):
                connection.send(pieces[index])
            hello_bytes = len(received) - len(_strip_hello(bytes(received)))
            received += await _read_exactly(peer, hello_bytes + len(expected) - len(received))
            assert _strip_hello(bytes(received)) == expected
        finally:
            connection.close()
            peer.close()
            listener.close()
        assert connection.lost.done()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_peer_closing_ends_the_connection() -> None:
    async def scenario() -> None:
        connection, _, peer, listener = await _pair(1 << 20)
        try:
            peer.close()
            await asyncio.wait_for(connection.lost, LIVENESS_S)
            assert connection.closed and not connection.ready
            connection.send(b"after close")  # ignored, never raises
        finally:
            connection.close()
            listener.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
