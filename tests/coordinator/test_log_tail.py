"""A standby's tail (``LogTail``) follows the writer into its next chunk at once.

The writer moves to a new chunk once per checkpoint, and a checkpointer standby takes
its candidate at the start of that chunk: the tail looks for the next chunk on each of
the first five empty reads after reading pages, then on every fifth idle read only (an
idle standby's request rate on a cloud store, priced by ``ambrosia-bench standby-cost``).
"""

from __future__ import annotations

import asyncio
import uuid

from ambrosia.backends import memory, open_store
from ambrosia.backends.base import ChunkRange, Lease, LogStore, Meta
from ambrosia.backends.retry import DEFAULT_RETRY_POLICY
from ambrosia.coordinator.standby import _LISTING_EVERY_IDLE_POLLS, LogTail
from ambrosia.log.page import PageBuilder

INSTANCE = "server"
INSTANCE_ID = 7


def _page(sequence: int) -> bytes:
    builder = PageBuilder()
    builder.add_group("client", sequence, 1, 1, b"x" * 64)
    return builder.finish(instance_id=INSTANCE_ID, epoch=1, sequence=sequence)


class _Writer:
    """A primary's appends, chunk switches and metadata, on a real store."""

    def __init__(self, store: LogStore, lease: Lease) -> None:
        self.store = store
        self.lease = lease
        self.chunk = -1
        self.offset = 0
        self.sequence = 1
        self.version: str | None = None

    async def next_chunk(self) -> None:
        self.chunk += 1
        self.offset = 0
        await self.store.create_chunk(self.lease, self.chunk)
        meta = Meta(checkpoint=None, epoch=1, chunks=ChunkRange(0, self.chunk))
        self.version = await self.store.swap_meta(self.lease, expected=self.version, new=meta)

    async def append(self) -> None:
        data = _page(self.sequence)
        await self.store.append(self.lease, self.chunk, expected_offset=self.offset, data=data)
        self.offset += len(data)
        self.sequence += 1


def test_the_first_empty_read_after_pages_finds_the_next_chunk() -> None:
    async def scenario() -> None:
        name = f"tail-{uuid.uuid4().hex}"
        store = await open_store(f"memory://{name}", INSTANCE)
        try:
            writer = _Writer(store, await store.acquire_lease())
            await writer.next_chunk()
            tail = LogTail(
                store,
                instance_id=INSTANCE_ID,
                page_bytes_max=1 << 20,
                policy=DEFAULT_RETRY_POLICY,
                chunk=0,
                offset=0,
                next_sequence=1,
            )
            meta_reads = 0
            read_meta = store.read_meta

            async def counted() -> tuple[Meta | None, str | None]:
                nonlocal meta_reads
                meta_reads += 1
                return await read_meta()

            store.read_meta = counted  # type: ignore[method-assign]

            for _ in range(3):
                await writer.append()
            assert [page.sequence for _, page in await tail.poll()] == [1, 2, 3]
            # The writer filled chunk 0 and went on: the next read of chunk 0 finds
            # nothing, and the same poll returns what chunk 1 holds.
            await writer.next_chunk()
            await writer.append()
            assert [(chunk, page.sequence) for chunk, page in await tail.poll()] == [(1, 4)]
            assert tail.chunk == 1

            # Idle: a look at the metadata on each of the first five empty reads, then
            # on one in five.
            meta_reads = 0
            for _ in range(_LISTING_EVERY_IDLE_POLLS):
                assert await tail.poll() == []
            assert meta_reads == _LISTING_EVERY_IDLE_POLLS
            meta_reads = 0
            idle_polls = 4 * _LISTING_EVERY_IDLE_POLLS
            for _ in range(idle_polls):
                assert await tail.poll() == []
            assert meta_reads == idle_polls // _LISTING_EVERY_IDLE_POLLS
        finally:
            await store.close()
            memory.forget(name)

    asyncio.run(scenario())
