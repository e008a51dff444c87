"""Issue 8, case 7 (receiver side): the newest chunk of the receiver's log is truncated
in its middle after it acknowledged calls. Recovery sees a torn write and cuts it off;
the sender still holds those calls as acknowledged, says so in its Hello, and the
receiver stops with an error naming the sender and both sequence numbers (it used to
refuse the sender's batches forever: "batch from X starts at N, expected M")."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from coordinator_peers import Peers, Recorder, Sender

from ambrosia.backends import open_store
from ambrosia.coordinator.runtime import Config, Runtime
from ambrosia.errors import LostAcknowledgedError

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
