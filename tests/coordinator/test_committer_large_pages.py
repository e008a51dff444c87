"""Large pages in the committer (``Committer._start_write``), on the real file store: a
page from a megabyte on is hashed and appended in one job on the writer thread
(``BlockingAppend``), the next one queued behind it once full, retried whole when the
store is unavailable, and a store without the blocking append
(the memory store) takes the hash-then-append path; every page reads back intact."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import tracemalloc
from pathlib import Path

import pytest

from ambrosia.backends.base import BlockingAppend, Lease, LogStore
from ambrosia.backends.file import FileLogStore
from ambrosia.backends.memory import MemoryLogStore
from ambrosia.backends.retry import RetryPolicy
from ambrosia.coordinator.committer import Committer
from ambrosia.errors import StorageUnavailableError
from ambrosia.log.page import instance_id_for, scan_chunk
from ambrosia.protocol.inputs import InputMarks
from ambrosia.wire.messages import IncomingRpc, RpcKind, encode

CALL = encode(IncomingRpc(1, RpcKind.FORK, b"\x5a" * (256 * 1024)))
CALLS = 12  # 3 MiB: pages over the one-megabyte line


class FlakyFileStore(FileLogStore):
    """The file store whose first blocking append fails as unavailable, before writing."""

    def __init__(self, root: Path, instance: str) -> None:
        super().__init__(root, instance)
        self.blocking_calls = 0

    def append_blocking(
        self, lease: Lease, chunk: int, *, expected_offset: int, data: bytes | bytearray
    ) -> None:
        self.blocking_calls += 1
        if self.blocking_calls == 1:
            raise StorageUnavailableError("the first blocking append fails")
        super().append_blocking(lease, chunk, expected_offset=expected_offset, data=data)


def committer_on(
    store: LogStore,
    lease: Lease,
    durable: list[dict[str, int]],
    *,
    delivery_pages_max: int = 16,
    attempts: int = 4,
) -> Committer:
    """A committer of 8 MiB pages on ``store``; the marks it makes durable go to ``durable``."""
    return Committer(
        store,
        lease,
        instance_id=instance_id_for("server"),
        chunk=0,
        next_sequence=1,
        page_bytes_max=8 * 1024 * 1024,
        delivery_pages_max=delivery_pages_max,
        on_durable=lambda marks: durable.append(dict(marks)),
        collect_trims=list,
        inputs=InputMarks(),
        chunk_bytes_max=1 << 30,
        on_chunk_full=lambda: None,
        retry_policy=RetryPolicy(attempts_max=attempts, delay_initial_s=0.01, delay_max_s=0.02),
    )


async def write_pages(store: LogStore) -> tuple[list[dict[str, int]], int]:
    lease = await store.acquire_lease()
    await store.create_chunk(lease, 0)
    durable: list[dict[str, int]] = []
    committer = committer_on(store, lease, durable, attempts=4)
    for seq in range(1, CALLS + 1):
        while not committer.try_add("client", seq, 1, 1, CALL):
            room = asyncio.Event()
            committer.wait_for_room(room.set)
            await room.wait()
    await committer.drain()
    assert committer.failed is None, committer.failed
    return durable, committer.pages_written


def read_back(data: bytes) -> list[int]:
    scan = scan_chunk(data, where="chunk 0", instance_id=instance_id_for("server"))
    assert not scan.torn_tail and scan.valid_bytes == len(data), scan.torn_reason
    return [
        seq
        for page in scan.pages
        for group in page.groups
        for seq in range(group.first_seq, group.first_seq + group.count)
    ]


@pytest.mark.parametrize("kind", ["file", "flaky file", "memory"])
def test_large_pages_are_hashed_and_written_whole(tmp_path: Path, kind: str) -> None:
    store: LogStore
    (tmp_path / "server").mkdir()
    if kind == "file":
        store = FileLogStore(tmp_path, "server")
    elif kind == "flaky file":
        store = FlakyFileStore(tmp_path, "server")
    else:
        store = MemoryLogStore(tmp_path.name, "server")
    assert isinstance(store, BlockingAppend) == (kind != "memory")

    async def scenario() -> bytes:
        durable, pages = await write_pages(store)
        assert pages >= 1 and durable[-1] == {"client": CALLS}, durable
        return await store.read_chunk(0)

    data = asyncio.run(scenario())
    assert len(data) > 1 << 20
    assert read_back(data) == list(range(1, CALLS + 1))
    if isinstance(store, FlakyFileStore):
        assert store.blocking_calls >= 2  # the failed job was run again, whole


class GatedFileStore(FileLogStore):
    """The file store whose first blocking append waits until the committer has queued
    the next page behind it (``queued``), then writes or (``fail_first``) fails as
    unavailable before writing. Records each call's offset and outcome, in order."""

    def __init__(self, root: Path, instance: str, *, fail_first: bool) -> None:
        super().__init__(root, instance)
        self.fail_first = fail_first
        self.queued = threading.Event()
        self.calls: list[tuple[int, str]] = []

    def append_blocking(
        self, lease: Lease, chunk: int, *, expected_offset: int, data: bytes | bytearray
    ) -> None:
        if not self.calls:
            assert self.queued.wait(10), "the next page was not queued behind the first"
            if self.fail_first:
                self.calls.append((expected_offset, "failed"))
                raise StorageUnavailableError("the first blocking append fails")
        super().append_blocking(lease, chunk, expected_offset=expected_offset, data=data)
        self.calls.append((expected_offset, "written"))


@pytest.mark.parametrize("fail_first", [False, True])
def test_the_next_large_page_is_queued_behind_the_one_being_written(
    tmp_path: Path, fail_first: bool
) -> None:
    """While a large page is written, the next one is sealed once full and queued on the
    writer thread; pages are still durable one after the other, in order. When the first
    fails, the one queued behind it writes nothing until the first is written again."""
    (tmp_path / "server").mkdir()
    store = GatedFileStore(tmp_path, "server", fail_first=fail_first)
    calls = 80  # 20 MiB: three pages at least

    async def scenario() -> bytes:
        lease = await store.acquire_lease()
        await store.create_chunk(lease, 0)
        durable: list[dict[str, int]] = []
        committer = committer_on(store, lease, durable, attempts=6)
        for seq in range(1, calls + 1):
            while not committer.try_add("client", seq, 1, 1, CALL):
                if len(committer._in_flight) == 2:
                    store.queued.set()
                room = asyncio.Event()
                committer.wait_for_room(room.set)
                while not room.is_set():  # a failed writer wakes no one: look
                    assert committer.failed is None, committer.failed
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(room.wait(), 0.5)
            if len(committer._in_flight) == 2:
                store.queued.set()
        await committer.drain()
        assert committer.failed is None, committer.failed
        # Durable marks in order, ending with the last call.
        tops = [marks["client"] for marks in durable]
        assert tops == sorted(tops) and tops[-1] == calls, tops
        committer.close()
        return await store.read_chunk(0)

    data = asyncio.run(scenario())
    assert read_back(data) == list(range(1, calls + 1))
    written = [offset for offset, outcome in store.calls if outcome == "written"]
    assert written == sorted(written) and written[0] == 0, store.calls
    if fail_first:
        assert store.calls[0] == (0, "failed"), store.calls
        # The queued page did not reach the store before the first was written again.
        assert store.calls[1] == (0, "written"), store.calls


def test_written_pages_are_not_kept_alive_by_the_ones_queued_after_them(tmp_path: Path) -> None:
    """Each queued job looks at the page before it; a finished page must not keep its
    bytes (or the page before it) alive through that, or memory grows with every page."""
    (tmp_path / "server").mkdir()
    store = FileLogStore(tmp_path, "server")
    calls = 480  # 120 MiB: fifteen pages or more

    async def scenario() -> int:
        lease = await store.acquire_lease()
        await store.create_chunk(lease, 0)
        committer = committer_on(store, lease, [], delivery_pages_max=1)
        for seq in range(1, calls + 1):
            while not committer.try_add("client", seq, 1, 1, CALL):
                room = asyncio.Event()
                committer.wait_for_room(room.set)
                await asyncio.wait_for(room.wait(), 30)
            while committer.take_delivered() is not None:
                pass
        await committer.drain()
        while committer.take_delivered() is not None:
            pass
        assert committer.failed is None and committer.pages_written >= 15
        gc.collect()
        _, peak = tracemalloc.get_traced_memory()
        committer.close()
        return peak

    tracemalloc.start()
    try:
        peak = asyncio.run(scenario())
    finally:
        tracemalloc.stop()
    # At most the page being filled, two in flight and one awaiting delivery, and the
    # copies made on the way: not the 120 MiB written.
    print(f"peak {peak / 2**20:.1f} MiB")
    assert peak < 64 * 1024 * 1024, peak
