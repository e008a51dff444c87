"""Issue 8, case 7 (receiver side): the newest chunk of the receiver's log is truncated
in its middle after it acknowledged calls. Recovery sees a torn write and cuts it off;
the sender still holds those calls as acknowledged, says so in its Hello, and the
receiver stops with an error naming the sender and both sequence numbers (it used to
refuse the sender's batches forever: "batch from X starts at N, expected M")."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest
from coordinator_peers import Peers, Recorder, Sender

from ambrosia.backends import memory, open_store
from ambrosia.coordinator.runtime import Config, Runtime
from ambrosia.errors import LostAcknowledgedError
from ambrosia.wire import Direction, Hello, MessageDecoder, ReplayFrom, encode

TOTAL = 400


def test_a_receiver_whose_log_lost_acknowledged_calls_stops(tmp_path: Path) -> None:
    config = Config(checkpoint_log_bytes=1 << 30)  # no checkpoint covers the calls

    async def scenario() -> None:
        peers = Peers()
        url = f"file://{tmp_path}"

        async def start(name: str, factory: type[Recorder] | type[Sender]) -> Runtime:
            store = await open_store(url, name)
            return await peers.start(name, factory, store, config)

        server = await start("server", Recorder)
        client = await start("client", Sender)
        app = client.dispatcher.app if client.dispatcher else None
        assert isinstance(app, Sender)
        app.this.begin.impulse("server", TOTAL, 10)
        stream = client.streams
        deadline = asyncio.get_running_loop().time() + 20
        while not ("server" in stream and stream["server"].acked_through >= TOTAL):
            assert asyncio.get_running_loop().time() < deadline, "calls not acknowledged"
            await asyncio.sleep(0.01)
        # Let the trim point reach the client's log (it rides on its next page).
        app.this.begin.impulse("server", 0, 1)
        await asyncio.sleep(0.2)
        await client.stop()
        await server.stop()
        chunks = sorted((tmp_path / "server").rglob("chunk-*"))
        newest = max(chunks, key=lambda path: path.stat().st_size)
        size = newest.stat().st_size
        os.truncate(newest, size // 2)
        peers.ports.clear()
        server = await start("server", Recorder)
        client = await start("client", Sender)
        try:
            await asyncio.wait_for(server.stopped.wait(), 20)
            failure = server.failure
            assert isinstance(failure, LostAcknowledgedError), failure
            message = str(failure)
            assert "client" in message
            assert str(client.streams["server"].acked_through) in message
            accepted = server.committer.accepted.get("client", 0) if server.committer else -1
            assert f"ends at {accepted}" in message and accepted < TOTAL
        finally:
            await client.stop()
            await server.stop()

    asyncio.run(asyncio.wait_for(scenario(), 50))


class _AheadReceiver:
    """A receiver played by the test: it admits any Hello and names a resume point
    ``resume_after`` that the sender's stream to it never reached."""

    def __init__(self, resume_after: int) -> None:
        self.resume_after = resume_after
        self.hellos: list[Hello] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        decoder = MessageDecoder(Direction.COORDINATOR_TO_COORDINATOR)
        hello = None
        while hello is None:
            data = await reader.read(65536)
            if not data:
                return
            decoder.feed(data)
            hello = next(iter(decoder), None)
        assert isinstance(hello, Hello)
        self.hellos.append(hello)
        writer.write(encode(ReplayFrom(self.resume_after, self.resume_after)))
        # Read (and ignore) whatever follows, until the sender goes away.
        while await reader.read(65536):
            pass


@pytest.mark.parametrize("resume_after", [1_000_000, 6], ids=["far-ahead", "one-beyond"])
def test_a_sender_whose_log_lost_what_a_receiver_holds_stops(resume_after: int) -> None:
    """Case 7, sender side: the receiver's ReplayFrom names a call this instance never
    produced toward it (its own log lost the pages that produced them): the instance
    stops with LostAcknowledgedError naming the receiver and both numbers."""

    async def scenario() -> None:
        peers = Peers()
        receiver = _AheadReceiver(resume_after)
        server = await asyncio.start_server(receiver.serve, "127.0.0.1", 0)
        peers.registered.add("server")
        peers.ports["server"] = server.sockets[0].getsockname()[1]
        name = f"lost-sender-{uuid.uuid4().hex}"
        store = await open_store(f"memory://{name}", "client")
        client = await peers.start("client", Sender, store, Config())
        try:
            app = client.dispatcher.app if client.dispatcher else None
            assert isinstance(app, Sender)
            # Forks 1..4, then awaits call 5: five calls to "server", and no more until
            # a result comes (none will).
            app.this.begin.impulse("server", 100, 10)
            await asyncio.wait_for(client.stopped.wait(), 20)
            failure = client.failure
            assert isinstance(failure, LostAcknowledgedError), failure
            message = str(failure)
            assert client.streams["server"].next_seq == 5
            assert "server" in message
            assert f"resumes after call {resume_after}" in message
            assert "only ever produced 5 calls" in message
            assert [hello.sender for hello in receiver.hellos] == ["client"]
            assert receiver.hellos[0].acked == 0
        finally:
            await client.stop()
            for writer in receiver.writers:
                writer.close()
            server.close()
            memory.forget(name)

    asyncio.run(asyncio.wait_for(scenario(), 40))
