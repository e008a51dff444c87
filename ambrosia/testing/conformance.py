"""The conformance suite every log store backend must pass.

Each check is a coroutine function taking a factory ``make_store(instance)`` that
returns a fresh store object for that instance. Calling the factory twice with the
same instance must give two independent store objects over the SAME log, as two
processes would have (this is how takeover and fencing are exercised). Each check picks
its own unique instance names, so checks can share one bucket, container or
directory and be run again against it. A failed check raises ``AssertionError``.

Run them all, one test per (check, backend)::

    from ambrosia.testing.conformance import CONFORMANCE_CHECKS

    @pytest.mark.parametrize(("name", "check"), CONFORMANCE_CHECKS)
    def test_conformance(name, check, tmp_path):
        async def make_store(instance):
            return await open_store(tmp_path.as_uri(), instance)
        anyio.run(check, make_store)

What the checks hold a backend to, beyond the docstrings of ``LogStore``: reading a
chunk at its exact end returns ``b""``; an exact retry of an append that landed either
succeeds or raises ``OffsetMismatchError`` but never writes the bytes twice; a second
``create_chunk`` of a chunk that already holds data either raises a ``StorageError`` or
does nothing, and never loses the data.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, suppress

import anyio

from ambrosia.backends.base import ChunkRange, Lease, LogStore, Meta
from ambrosia.errors import (
    FenceError,
    LeaseHeldError,
    LeaseLostError,
    NotFoundError,
    OffsetMismatchError,
    PreconditionFailedError,
    StorageError,
)

__all__ = [
    "CONFORMANCE_CHECKS",
    "Check",
    "StoreFactory",
    "check_append_offset_fencing",
    "check_checkpoint_invisible_until_complete",
    "check_create_chunk_idempotent",
    "check_epochs_increase",
    "check_lease_exclusive",
    "check_listing_order",
    "check_meta_chunk_record",
    "check_meta_compare_and_swap_race",
    "check_read_chunk_ranges",
    "check_retention",
    "check_stale_lease_fenced",
]

StoreFactory = Callable[[str], Awaitable[LogStore]]
Check = Callable[[StoreFactory], Awaitable[None]]

META_RACERS = 20
CHECKPOINT_BYTES = 16 * 1024 * 1024


def _instance(purpose: str) -> str:
    return f"conformance-{purpose}-{uuid.uuid4().hex[:12]}"


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


async def _expect_raises(
    error_types: type[BaseException] | tuple[type[BaseException], ...],
    operation: Awaitable[object],
    what: str,
) -> BaseException:
    try:
        await operation
    except error_types as error:
        return error
    raise AssertionError(f"{what}: expected {error_types}, nothing was raised")


async def _open(stack: AsyncExitStack, make_store: StoreFactory, instance: str) -> LogStore:
    store = await make_store(instance)
    stack.push_async_callback(store.close)
    return store


async def check_append_offset_fencing(make_store: StoreFactory) -> None:
    """Appends land only at the chunk's end; an exact retry is never written twice."""
    async with AsyncExitStack() as stack:
        store = await _open(stack, make_store, _instance("offset"))
        lease = await store.acquire_lease()
        await store.create_chunk(lease, 0)
        await store.append(lease, 0, expected_offset=0, data=b"abc")
        for wrong_offset in (0, 2, 4, 100):
            error = await _expect_raises(
                OffsetMismatchError,
                store.append(lease, 0, expected_offset=wrong_offset, data=b"XYZ"),
                f"append at offset {wrong_offset} of a 3-byte chunk",
            )
            _expect(isinstance(error, FenceError), "OffsetMismatchError is a FenceError")
        await store.append(lease, 0, expected_offset=3, data=b"def")
        # A store that cannot tell a retry from a conflict may refuse it.
        with suppress(OffsetMismatchError):
            await store.append(lease, 0, expected_offset=3, data=b"def")
        content = await store.read_chunk(0)
        _expect(content == b"abcdef", f"chunk holds {content!r}, expected b'abcdef'")
        await _expect_raises(
            NotFoundError,
            store.append(lease, 7, expected_offset=0, data=b"x"),
            "append to a chunk that was never created",
        )
        chunks = await store.list_chunks()
        _expect(
            [(chunk.number, chunk.size_bytes) for chunk in chunks] == [(0, 6)],
            f"list_chunks gave {chunks}",
        )


async def check_stale_lease_fenced(make_store: StoreFactory) -> None:
    """After another store took the lease over, every mutation under the old one fails."""
    async with AsyncExitStack() as stack:
        instance = _instance("stale")
        first = await _open(stack, make_store, instance)
        old = await first.acquire_lease()
        await first.create_chunk(old, 0)
        await first.append(old, 0, expected_offset=0, data=b"old")
        await first.release_lease(old)

        second = await _open(stack, make_store, instance)
        new = await second.acquire_lease(wait_s=5.0)
        _expect(new.epoch > old.epoch, f"epoch {new.epoch} after {old.epoch}")
        stale_operations: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("append", lambda: first.append(old, 0, expected_offset=3, data=b"stale")),
            ("create_chunk", lambda: first.create_chunk(old, 1)),
            ("write_checkpoint", lambda: first.write_checkpoint(old, 1, b"stale")),
            ("swap_meta", lambda: first.swap_meta(old, expected=None, new=Meta(None, 0))),
            ("delete_before", lambda: first.delete_before(old, 1)),
            ("renew_lease", lambda: first.renew_lease(old)),
        ]
        for name, operation in stale_operations:
            await _expect_raises(FenceError, operation(), f"{name} under a stale lease")
        await _expect_raises(
            LeaseLostError,
            first.append(old, 0, expected_offset=3, data=b"stale"),
            "append under a stale lease",
        )
        renewed = await second.renew_lease(new)
        _expect(renewed.epoch == new.epoch, "renewing keeps the epoch")
        await second.append(renewed, 0, expected_offset=3, data=b"new")
        content = await second.read_chunk(0)
        _expect(content == b"oldnew", f"chunk holds {content!r}, expected b'oldnew'")
        _expect(await second.list_checkpoints() == [], "a fenced checkpoint became visible")
        chunks = [chunk.number for chunk in await second.list_chunks()]
        _expect(chunks == [0], f"a fenced create_chunk became visible: {chunks}")
        meta, version = await second.read_meta()
        _expect(meta is None and version is None, "a fenced swap_meta became visible")


async def check_lease_exclusive(make_store: StoreFactory) -> None:
    """A held lease cannot be acquired elsewhere until it is released."""
    async with AsyncExitStack() as stack:
        instance = _instance("exclusive")
        holder = await _open(stack, make_store, instance)
        contender = await _open(stack, make_store, instance)
        lease = await holder.acquire_lease()
        await _expect_raises(
            LeaseHeldError, contender.acquire_lease(wait_s=0.0), "acquire while held"
        )
        await _expect_raises(
            LeaseHeldError, contender.acquire_lease(wait_s=0.2), "acquire while held, waiting"
        )
        taken: list[Lease] = []

        async def take_over() -> None:
            taken.append(await contender.acquire_lease(wait_s=10.0))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(take_over)
            await anyio.sleep(0.1)
            _expect(not taken, "the contender got the lease while it was still held")
            await holder.release_lease(lease)
        _expect(len(taken) == 1 and taken[0].epoch > lease.epoch, f"took over as {taken}")
        await _expect_raises(FenceError, holder.renew_lease(lease), "renew after takeover")


async def check_create_chunk_idempotent(make_store: StoreFactory) -> None:
    """Creating an empty chunk twice is fine; a chunk holding data is never emptied."""
    async with AsyncExitStack() as stack:
        store = await _open(stack, make_store, _instance("create"))
        lease = await store.acquire_lease()
        await store.create_chunk(lease, 0)
        await store.create_chunk(lease, 0)
        chunks = await store.list_chunks()
        _expect(
            [(chunk.number, chunk.size_bytes) for chunk in chunks] == [(0, 0)],
            f"after two creates: {chunks}",
        )
        await store.append(lease, 0, expected_offset=0, data=b"data")
        with suppress(StorageError):
            await store.create_chunk(lease, 0)
        content = await store.read_chunk(0)
        _expect(content == b"data", f"create_chunk of a full chunk left {content!r}")


async def check_listing_order(make_store: StoreFactory) -> None:
    """list_chunks and list_checkpoints are in numeric order, whatever the write order."""
    async with AsyncExitStack() as stack:
        store = await _open(stack, make_store, _instance("order"))
        lease = await store.acquire_lease()
        numbers = [3, 1, 10, 2, 0, 11, 100]
        for number in numbers:
            await store.create_chunk(lease, number)
            await store.append(lease, number, expected_offset=0, data=b"x" * number)
            await store.write_checkpoint(lease, number, f"state {number}".encode())
        chunks = await store.list_chunks()
        expected = [(number, number) for number in sorted(numbers)]
        _expect(
            [(chunk.number, chunk.size_bytes) for chunk in chunks] == expected,
            f"list_chunks gave {chunks}",
        )
        checkpoints = await store.list_checkpoints()
        _expect(checkpoints == sorted(numbers), f"list_checkpoints gave {checkpoints}")
        for number in numbers:
            data = await store.read_checkpoint(number)
            _expect(data == f"state {number}".encode(), f"checkpoint {number} holds {data!r}")
        await _expect_raises(NotFoundError, store.read_checkpoint(5), "read a missing checkpoint")


async def check_checkpoint_invisible_until_complete(make_store: StoreFactory) -> None:
    """While a checkpoint is being written, readers see it absent or whole, never in part."""
    async with AsyncExitStack() as stack:
        instance = _instance("checkpoint")
        writer = await _open(stack, make_store, instance)
        reader = await _open(stack, make_store, instance)
        lease = await writer.acquire_lease()
        data = bytes(range(256)) * (CHECKPOINT_BYTES // 256)
        done = anyio.Event()
        observations = 0

        async def write() -> None:
            await writer.write_checkpoint(lease, 1, data)
            done.set()

        async def observe() -> None:
            nonlocal observations
            while not done.is_set():
                observations += 1
                if 1 in await reader.list_checkpoints():
                    seen = await reader.read_checkpoint(1)
                    _expect(seen == data, f"a visible checkpoint held {len(seen)} bytes")
                await anyio.sleep(0)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(write)
            tasks.start_soon(observe)
        _expect(observations > 0, "the reader never looked")
        _expect(await reader.list_checkpoints() == [1], "the written checkpoint is not listed")

        # A write cancelled midway leaves the checkpoint absent or whole.
        with anyio.move_on_after(0.001):
            await writer.write_checkpoint(lease, 2, data)
        listed = await reader.list_checkpoints()
        if 2 in listed:
            seen = await reader.read_checkpoint(2)
            _expect(seen == data, f"a cancelled checkpoint is visible with {len(seen)} bytes")
        _expect(set(listed) <= {1, 2}, f"list_checkpoints gave {listed}")


async def check_meta_compare_and_swap_race(make_store: StoreFactory) -> None:
    """Twenty concurrent swaps from the same version: exactly one wins."""
    async with AsyncExitStack() as stack:
        store = await _open(stack, make_store, _instance("meta"))
        meta, version = await store.read_meta()
        _expect(meta is None and version is None, f"fresh metadata is {meta}, {version}")
        lease = await store.acquire_lease()
        first = Meta(checkpoint=None, epoch=lease.epoch, extra=(("format", "1"),))
        base_version = await store.swap_meta(lease, expected=None, new=first)
        meta, version = await store.read_meta()
        _expect(meta == first and version == base_version, f"read back {meta}, {version}")
        await _expect_raises(
            PreconditionFailedError,
            store.swap_meta(lease, expected=None, new=first),
            "swap expecting no metadata when there is some",
        )
        winners: list[tuple[int, str]] = []
        losers: list[int] = []

        async def race(racer: int) -> None:
            new = Meta(checkpoint=racer, epoch=lease.epoch)
            try:
                winners.append(
                    (racer, await store.swap_meta(lease, expected=base_version, new=new))
                )
            except PreconditionFailedError:
                losers.append(racer)

        async with anyio.create_task_group() as tasks:
            for racer in range(META_RACERS):
                tasks.start_soon(race, racer)
        _expect(len(winners) == 1, f"{len(winners)} winners: {winners}")
        _expect(len(losers) == META_RACERS - 1, f"{len(losers)} losers")
        winner, winning_version = winners[0]
        _expect(winning_version != base_version, "the version did not change")
        meta, version = await store.read_meta()
        _expect(
            meta == Meta(checkpoint=winner, epoch=lease.epoch) and version == winning_version,
            f"read back {meta}, {version}; the winner was {winner} at {winning_version}",
        )


async def check_meta_chunk_record(make_store: StoreFactory) -> None:
    """The metadata's chunk range round-trips, survives a takeover, and can be absent.

    Recovery trusts ``Meta.chunks`` to say which chunks must exist, so a backend that
    dropped it (or kept a stale one after a takeover rewrote the record) would turn a
    deleted chunk back into a silent loss. An empty range (``last == first - 1``) is
    what a log records before its first chunk is created.
    """
    async with AsyncExitStack() as stack:
        instance = _instance("meta-chunks")
        first = await _open(stack, make_store, instance)
        lease = await first.acquire_lease()
        records = [
            Meta(checkpoint=0, epoch=lease.epoch, chunks=ChunkRange(0, -1)),
            Meta(checkpoint=0, epoch=lease.epoch, chunks=ChunkRange(0, 0)),
            Meta(checkpoint=7, epoch=lease.epoch, extra=(("k", "v"),), chunks=ChunkRange(6, 9)),
            Meta(checkpoint=7, epoch=lease.epoch),  # a record without the field
            Meta(checkpoint=12, epoch=lease.epoch, chunks=ChunkRange(11, 12)),
        ]
        version: str | None = None
        for record in records:
            version = await first.swap_meta(lease, expected=version, new=record)
            meta, read_version = await first.read_meta()
            _expect(meta == record and read_version == version, f"wrote {record}, read {meta}")
        await first.release_lease(lease)
        second = await _open(stack, make_store, instance)
        taken = await second.acquire_lease(wait_s=5.0)
        meta, version = await second.read_meta()
        _expect(meta == records[-1], f"after a takeover the metadata reads {meta}")
        moved = Meta(checkpoint=12, epoch=taken.epoch, chunks=ChunkRange(12, 14))
        await second.swap_meta(taken, expected=version, new=moved)
        meta, _ = await first.read_meta()
        _expect(meta == moved, f"another store object reads {meta}, expected {moved}")


async def check_retention(make_store: StoreFactory) -> None:
    """delete_before removes exactly the chunks and checkpoints below the number."""
    async with AsyncExitStack() as stack:
        store = await _open(stack, make_store, _instance("retention"))
        lease = await store.acquire_lease()
        for number in range(5):
            await store.create_chunk(lease, number)
            await store.append(lease, number, expected_offset=0, data=f"chunk {number}".encode())
            await store.write_checkpoint(lease, number, f"state {number}".encode())
        await store.delete_before(lease, 3)
        chunks = [chunk.number for chunk in await store.list_chunks()]
        _expect(chunks == [3, 4], f"chunks left: {chunks}")
        checkpoints = await store.list_checkpoints()
        _expect(checkpoints == [3, 4], f"checkpoints left: {checkpoints}")
        _expect(await store.read_chunk(3) == b"chunk 3", "chunk 3 changed")
        _expect(await store.read_checkpoint(4) == b"state 4", "checkpoint 4 changed")
        await _expect_raises(NotFoundError, store.read_chunk(1), "read a deleted chunk")
        await _expect_raises(NotFoundError, store.read_checkpoint(2), "read a deleted checkpoint")
        await store.delete_before(lease, 3)  # nothing left to delete is not an error
        await store.append(lease, 4, expected_offset=7, data=b"+")
        _expect(await store.read_chunk(4) == b"chunk 4+", "chunk 4 is no longer appendable")
        # A kept checkpoint 4 that resumes inside chunk 3: chunk 3 stays, checkpoint 3 goes.
        await store.delete_before(lease, 3, checkpoints_before=4)
        chunks = [chunk.number for chunk in await store.list_chunks()]
        _expect(chunks == [3, 4], f"chunks left after split retention: {chunks}")
        checkpoints = await store.list_checkpoints()
        _expect(checkpoints == [4], f"checkpoints left after split retention: {checkpoints}")


async def check_read_chunk_ranges(make_store: StoreFactory) -> None:
    """read_chunk honours offset and length; a missing chunk is NotFoundError."""
    async with AsyncExitStack() as stack:
        store = await _open(stack, make_store, _instance("ranges"))
        lease = await store.acquire_lease()
        await store.create_chunk(lease, 0)
        data = bytes(range(256))
        await store.append(lease, 0, expected_offset=0, data=data[:100])
        await store.append(lease, 0, expected_offset=100, data=data[100:])
        cases = [(0, None), (10, 20), (99, 2), (250, None), (200, 56), (0, 0), (256, None)]
        for offset, length in cases:
            got = await store.read_chunk(0, offset=offset, length=length)
            end = len(data) if length is None else offset + length
            _expect(got == data[offset:end], f"read offset={offset} length={length}: {got!r}")
        await _expect_raises(NotFoundError, store.read_chunk(1), "read a missing chunk")


async def check_epochs_increase(make_store: StoreFactory) -> None:
    """Every acquisition, by any store object, gets a higher epoch than all before it."""
    async with AsyncExitStack() as stack:
        instance = _instance("epochs")
        epochs: list[int] = []
        reused = await _open(stack, make_store, instance)
        for round_number in range(6):
            store = reused if round_number % 2 else await _open(stack, make_store, instance)
            lease = await store.acquire_lease(wait_s=5.0)
            _expect(lease.instance == instance, f"lease names {lease.instance!r}")
            epochs.append(lease.epoch)
            await store.release_lease(lease)
        _expect(
            all(earlier < later for earlier, later in itertools.pairwise(epochs)),
            f"epochs {epochs} do not strictly increase",
        )


CONFORMANCE_CHECKS: list[tuple[str, Check]] = [
    ("append_offset_fencing", check_append_offset_fencing),
    ("stale_lease_fenced", check_stale_lease_fenced),
    ("lease_exclusive", check_lease_exclusive),
    ("create_chunk_idempotent", check_create_chunk_idempotent),
    ("listing_order", check_listing_order),
    ("checkpoint_invisible_until_complete", check_checkpoint_invisible_until_complete),
    ("meta_compare_and_swap_race", check_meta_compare_and_swap_race),
    ("meta_chunk_record", check_meta_chunk_record),
    ("retention", check_retention),
    ("read_chunk_ranges", check_read_chunk_ranges),
    ("epochs_increase", check_epochs_increase),
]
"""Every check as (name, coroutine function), for parametrizing over checks x backends."""
