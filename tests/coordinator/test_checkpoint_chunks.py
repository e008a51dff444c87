"""Checkpoints and chunk switches under a steady flood, on a real file log.

Each checkpoint n starts chunk n, and is taken only once chunk n - 1 is full. A page that
was already on its way to the full chunk when the checkpoint asked for the switch lands
there and finds the chunk still "full": that must not ask for a second checkpoint. Once
it did, checkpoints came in pairs with a nearly empty chunk between them, and when the
second one started before the first switch had happened it took the same number and
the immortal stopped ("checkpoint ... exists with other content").
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from coordinator_peers import Peers

from ambrosia.backends import open_store
from ambrosia.backends.base import Lease, LogStore
from ambrosia.backends.faults import FaultInjectingStore, FaultRates
from ambrosia.binding.immortal import Immortal, impulse, rpc
from ambrosia.coordinator.runtime import Config

CHUNK_BYTES = 256 * 1024
PAYLOAD = bytes(30_000)


class Sink(Immortal):
    def __init__(self) -> None:
        self.received = 0

    @rpc
    def take(self, payload: bytes) -> None:
        self.received += len(payload)


class Flood(Immortal):
    """Steps of forks carrying 30 KB each to the sink: its log fills chunk after chunk
    while earlier pages are still being written."""

    def __init__(self) -> None:
        self.steps_left = 0

    @impulse
    def begin(self, steps: int) -> None:
        self.steps_left = steps
        self.this.step.fork()

    @rpc
    def step(self) -> None:
        sink = self.proxy(Sink, "sink")
        for _ in range(8):
            sink.take.fork(PAYLOAD)
        self.steps_left -= 1
        if self.steps_left > 0:
            self.this.step.fork()


class SlowAppends(FaultInjectingStore):
    """The real store, with each append taking a couple of milliseconds longer (as on a
    network disk), so that pages are in flight when checkpoints ask for a new chunk."""

    async def append(
        self, lease: Lease, chunk: int, *, expected_offset: int, data: bytes | bytearray
    ) -> None:
        await asyncio.sleep(0.002)
        await super().append(lease, chunk, expected_offset=expected_offset, data=data)


def test_one_checkpoint_per_full_chunk(tmp_path: Path) -> None:
    peers = Peers()

    async def scenario() -> tuple[list[int], list[tuple[int, int]]]:
        sink_store: LogStore = SlowAppends(
            await open_store(f"file://{tmp_path}", "sink"), seed=1, rates=FaultRates()
        )
        flood_store = await open_store(f"file://{tmp_path}", "flood")
        sink = await peers.start(
            "sink",
            Sink,
            sink_store,
            Config(page_bytes_max=2 << 20, checkpoint_log_bytes=CHUNK_BYTES, checkpoints_kept=1000),
        )
        flood = await peers.start("flood", Flood, flood_store, Config())
        try:
            assert sink.dispatcher is not None and flood.dispatcher is not None
            sink_app = sink.dispatcher.app
            flood_app = flood.dispatcher.app
            assert isinstance(sink_app, Sink) and isinstance(flood_app, Flood)
            steps = 100
            flood_app.this.begin.impulse(steps)
            expected = steps * 8 * len(PAYLOAD)
            while sink_app.received < expected:
                for runtime in (sink, flood):
                    assert runtime.failure is None, f"{runtime.instance}: {runtime.failure}"
                await asyncio.sleep(0.01)
            assert sink.failure is None
            checkpoints = await sink_store.list_checkpoints()
            chunks = [(info.number, info.size_bytes) for info in await sink_store.list_chunks()]
        finally:
            await flood.stop()
            await sink.stop()
            await sink_store.close()
            await flood_store.close()
        return checkpoints, chunks

    checkpoints, chunks = asyncio.run(asyncio.wait_for(scenario(), 60))
    # 24 MB logged in pages of up to 2 MiB and chunks of 256 KiB: a chunk holds the page
    # that filled it and the page in flight then, so several switches, one checkpoint each.
    assert len(checkpoints) >= 6
    assert checkpoints == list(range(checkpoints[0], checkpoints[0] + len(checkpoints)))
    assert [number for number, _ in chunks] == list(range(chunks[0][0], chunks[-1][0] + 1))
    # Every chunk that was switched away from was full when its checkpoint was taken
    # (chunk 0 excepted: the first checkpoint is taken at start).
    small = [(number, size) for number, size in chunks[:-1] if number > 0 and size < CHUNK_BYTES]
    assert small == []
