"""Bad input over a real socket: each bad connection is closed with a logged reason, and
the coordinator keeps serving a well-behaved peer, whose calls still arrive exactly once,
in order, while bad connections come and go."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid

import pytest
from coordinator_peers import Pair, forget

from ambrosia.wire.messages import DataBatch, Direction, Hello, ReplayFrom, decode_message, encode
from ambrosia.wire.varint import encode_zigzag_int

PAYLOAD = b"\x0c\x00\x00\x02\x01\x01[1]"  # one framed RPC; never logged (every case is refused)


def hello(sender: str, receiver: str) -> bytes:
    return encode(Hello(1, sender, receiver, 1))


# name -> (bytes to send, a phrase the logged reason must contain)
CASES: dict[str, tuple[bytes, str]] = {
    "oversize length prefix": (encode_zigzag_int(2**30) + b"\x11" * 64, "exceeds the limit"),
    "negative length prefix": (encode_zigzag_int(-5) + b"\x00" * 8, "not positive"),
    "varint too long": (b"\xff" * 12, "varint"),
    "garbage (an HTTP request)": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not positive"),
    "unknown message type": (encode_zigzag_int(3) + b"\x63\x00\x00", "unknown message type 99"),
    "data batch before hello": (encode(DataBatch(1, 1, 1, PAYLOAD)), "unexpected DataBatch"),
    "wrong first sequence": (
        hello("intruder", "server") + encode(DataBatch(5, 1, 1, PAYLOAD)),
        "starts at 5, expected 1",
    ),
    "hello naming another receiver": (hello("stranger", "elsewhere"), "talking to elsewhere"),
    "hello claiming the receiver's own name": (hello("server", "server"), "reserved name"),
    "second hello": (hello("twice", "server") + hello("twice", "server"), "unexpected Hello"),
    "commit from a sender": (encode_zigzag_int(3) + b"\x03\x02\x02", "unexpected Commit"),
}


async def send_bad(port: int, data: bytes, wait_s: float = 3.0) -> tuple[bytes, bool]:
    """Send ``data``; return what came back and whether the coordinator closed the
    connection within ``wait_s``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = b""
    try:
        try:
            writer.write(data)
            await writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            return received, True
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), wait_s)
            except ConnectionResetError:
                return received, True
            except TimeoutError:
                return received, False
            if not chunk:
                return received, True
            received += chunk
    finally:
        writer.close()


def reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "ambrosia.links" and record.getMessage().startswith("closing connection")
    ]


def test_bad_connections_are_closed_and_the_good_peer_is_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="ambrosia.links")
    total = 1500
    rng = random.Random(7)

    async def scenario() -> None:
        name = f"bad-{uuid.uuid4().hex}"
        pair = Pair(name)
        try:
            await pair.start()
            assert pair.server is not None
            port = pair.server.bound_port
            # A peer that stalls mid-frame: a size prefix promising 1000 bytes, then 10.
            _, stalled = await asyncio.open_connection("127.0.0.1", port)
            stalled.write(hello("staller", "server") + encode_zigzag_int(1000) + b"\x11" * 10)
            await stalled.drain()
            pair.begin(total=total, per_step=10)
            rounds = 0
            garbage_closed = 0
            while not pair.finished(total) or rounds < 2:
                for case, (data, phrase) in CASES.items():
                    before = len(reasons(caplog))
                    answer, closed = await send_bad(port, data)
                    assert closed, f"{case}: the connection stayed open"
                    new = reasons(caplog)[before:]
                    assert len(new) == 1, f"{case}: expected one logged reason, got {new}"
                    assert phrase in new[0], f"{case}: {new[0]!r}"
                    if data.startswith(hello("intruder", "server")):
                        # The handshake itself succeeded before the bad batch.
                        assert decode_message(answer, Direction.COORDINATOR_TO_COORDINATOR) == (
                            ReplayFrom(0, 0)
                        )
                    # Random bytes: refused with a reason, or a plausible frame prefix the
                    # coordinator waits on (we give up and close); never anything else.
                    garbage = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 64)))
                    before = len(reasons(caplog))
                    _, closed = await send_bad(port, garbage, wait_s=0.1)
                    await asyncio.sleep(0.01)
                    assert len(reasons(caplog)) - before == int(closed), garbage.hex()
                    garbage_closed += closed
                rounds += 1
                assert rounds < 50, "the good peer made no progress"
            pair.check_exactly_once(total)
            assert garbage_closed > 0
            # The stalled peer was neither served nor able to hold anyone up.
            assert not stalled.is_closing()
            assert "staller" in pair.server.incoming
            stalled.close()
            # The intruder's refused batch never reached the log.
            assert pair.server.committer is not None
            assert "intruder" not in pair.server.committer.accepted
            for runtime in (pair.server, pair.client):
                assert runtime is not None and runtime.failure is None
        finally:
            await pair.stop()
            forget(name)

    asyncio.run(asyncio.wait_for(scenario(), 30))
