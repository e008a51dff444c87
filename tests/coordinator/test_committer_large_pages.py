"""Large pages in the committer (``Committer._write_one``), on the real file store: a page
from a megabyte on is hashed and appended in one worker-thread job (``BlockingAppend``),
retried whole when the store is unavailable, and a store without the blocking append
(the memory store) takes the hash-then-append path; every page reads back intact."""

from __future__ import annotations

import asyncio
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


async def write_pages(store: LogStore) -> tuple[list[dict[str, int]], int]:
    lease = await store.acquire_lease()
    await store.create_chunk(lease, 0)
    durable: list[dict[str, int]] = []
    committer = Committer(
        store,
        lease,
        instance_id=instance_id_for("server"),
        chunk=0,
        next_sequence=1,
        page_bytes_max=8 * 1024 * 1024,
        delivery_pages_max=16,
        on_durable=lambda marks: durable.append(dict(marks)),
        collect_trims=list,
        inputs=InputMarks(),
        chunk_bytes_max=1 << 30,
        on_chunk_full=lambda: None,
        retry_policy=RetryPolicy(attempts_max=4, delay_initial_s=0.01, delay_max_s=0.02),
    )
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
