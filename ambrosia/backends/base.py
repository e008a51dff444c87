"""The log store interface every backend implements.

A log store keeps the log of ONE instance (the store is opened for an instance name):

- chunks, numbered 0, 1, 2, ...: append-only sequences of pages (framing lives in
  ``ambrosia.log.page``; stores see opaque bytes). Chunk N holds the pages written
  after checkpoint N was taken.
- checkpoints, numbered like the chunk they precede: written whole, invisible until
  complete, immutable afterwards.
- one metadata record (``Meta``), replaced only by compare-and-swap on its version.
- a writer lease: at most one writer at a time. Every mutating call takes the ``Lease``
  and the store itself rejects a stale one (``LeaseLostError``); appends also name the
  offset they expect to extend (``OffsetMismatchError``), so two writers can never both
  extend the log even if one of them believes it still holds the lease.

Every call may raise ``StorageUnavailableError`` (retriable); callers retry with
backoff. An append whose outcome is unknown (timeout after the bytes may have landed)
is resolved by the caller by reading the chunk's size back before the next append;
``append`` of the exact same bytes at the same offset after they did land must succeed
(idempotent on retry) only when the store can tell; otherwise it raises
``OffsetMismatchError`` and the caller reads back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Lease:
    """Proof of being the instance's single writer.

    ``epoch`` strictly increases with every acquisition; ``token`` is backend specific
    (an Azure lease id, an S3 lock object's ETag, a lock file's identity).
    """

    instance: str
    epoch: int
    token: str


@dataclass(frozen=True, slots=True)
class ChunkInfo:
    number: int
    size_bytes: int


@dataclass(frozen=True, slots=True)
class ChunkRange:
    """The chunks the log holds, ``first`` through ``last`` inclusive.

    ``last == first - 1`` is an empty range (a log whose first chunk is not created yet).
    Every chunk in the range exists in storage: a chunk is recorded after it is created
    and before its first page is written, and retention raises ``first`` before it
    deletes anything. So a recorded chunk that storage lacks is always damage, and a
    chunk beyond ``last`` can only be an empty leftover of a crash between its creation
    and its recording (or a chunk a takeover pre-created).
    """

    first: int
    last: int

    def __post_init__(self) -> None:
        if self.first < 0 or self.last < self.first - 1:
            raise ValueError(f"chunk range {self.first}..{self.last} is not a range")

    def __contains__(self, number: object) -> bool:
        return isinstance(number, int) and self.first <= number <= self.last

    def __str__(self) -> str:
        if self.last < self.first:
            return f"none yet (the next is {self.first})"
        return f"{self.first}..{self.last}"


@dataclass(frozen=True, slots=True)
class Meta:
    """The instance's metadata record.

    ``checkpoint``: the latest complete checkpoint recovery starts from (None before the
    first). ``epoch``: the epoch of the writer that last swapped it. ``chunks``: which
    chunks the log holds (``ChunkRange``); None in a record written before the field
    existed, whose chunks recovery can only take from the store's listing. ``extra``:
    small string fields for the coordinator (format version and the like).
    """

    checkpoint: int | None
    epoch: int
    extra: tuple[tuple[str, str], ...] = ()
    chunks: ChunkRange | None = None


def recorded_as_created(meta: Meta | None, number: int) -> bool:
    """Whether ``meta`` records chunk ``number`` as created (it is at or below the range's end).

    A lease takeover creates (or fences) chunks a previous writer may have reserved but not
    created yet; it must not re-create one of these when it is missing: such a chunk was
    deleted, and recovery's audit must find it missing and name it, not find it empty.
    """
    return meta is not None and meta.chunks is not None and number <= meta.chunks.last


def meta_to_record(meta: Meta) -> dict[str, Any]:
    """The JSON object every backend stores for ``meta`` (backends add their own keys).

    ``chunks`` is written as ``[first, last]`` and left out when None, so a record
    without it is exactly what earlier versions wrote and read.
    """
    record: dict[str, Any] = {
        "checkpoint": meta.checkpoint,
        "epoch": meta.epoch,
        "extra": [list(pair) for pair in meta.extra],
    }
    if meta.chunks is not None:
        record["chunks"] = [meta.chunks.first, meta.chunks.last]
    return record


def meta_from_record(record: dict[str, Any]) -> Meta:
    """The inverse of ``meta_to_record``; KeyError, TypeError or ValueError if malformed.

    Unknown keys are ignored (backend bookkeeping such as a nonce or the writer).
    """
    checkpoint = record["checkpoint"]
    chunks = record.get("chunks")
    chunk_range = None
    if chunks is not None:
        first, last = chunks
        if type(first) is not int or type(last) is not int:
            raise TypeError(f"chunk range {chunks!r} is not two integers")
        chunk_range = ChunkRange(first, last)
    return Meta(
        checkpoint=None if checkpoint is None else int(checkpoint),
        epoch=int(record["epoch"]),
        extra=tuple((str(key), str(value)) for key, value in record["extra"]),
        chunks=chunk_range,
    )


class LogStore(Protocol):
    """Page-level, async, fenced storage for one instance's log."""

    @property
    def url(self) -> str: ...

    @property
    def instance(self) -> str: ...

    async def acquire_lease(self, *, wait_s: float = 0.0) -> Lease:
        """Become the writer. Raises LeaseHeldError if a live holder keeps it past wait_s."""
        ...

    async def renew_lease(self, lease: Lease) -> Lease:
        """Extend the lease. Raises LeaseLostError if it was taken over."""
        ...

    async def release_lease(self, lease: Lease) -> None: ...

    async def list_chunks(self) -> list[ChunkInfo]:
        """All chunks, ordered by number."""
        ...

    async def create_chunk(self, lease: Lease, number: int) -> None:
        """Create an empty chunk; idempotent if it exists and is empty."""
        ...

    async def append(
        self, lease: Lease, chunk: int, *, expected_offset: int, data: bytes | bytearray
    ) -> None:
        """Append data durably at expected_offset of chunk; fenced by lease and offset."""
        ...

    async def read_chunk(
        self, chunk: int, *, offset: int = 0, length: int | None = None
    ) -> bytes: ...

    async def write_checkpoint(self, lease: Lease, number: int, data: bytes) -> None:
        """Write checkpoint ``number``; invisible to readers until complete."""
        ...

    async def read_checkpoint(self, number: int) -> bytes: ...

    async def list_checkpoints(self) -> list[int]:
        """Numbers of complete checkpoints, ascending."""
        ...

    async def read_meta(self) -> tuple[Meta | None, str | None]:
        """The metadata record and its version (None, None if never written)."""
        ...

    async def swap_meta(self, lease: Lease, *, expected: str | None, new: Meta) -> str:
        """Replace the metadata if its version is still ``expected``; returns the new version.

        Raises PreconditionFailedError when another writer swapped it first.
        """
        ...

    async def delete_before(
        self, lease: Lease, number: int, *, checkpoints_before: int | None = None
    ) -> None:
        """Retention: delete chunks below ``number`` and checkpoints below
        ``checkpoints_before`` (default ``number``).

        The two differ when the oldest kept checkpoint N resumes inside chunk N - 1:
        that chunk stays, checkpoint N - 1 goes.
        """
        ...

    async def close(self) -> None: ...


@runtime_checkable
class BlockingAppend(Protocol):
    """A store whose append can also run as one blocking call on a worker thread.

    ``append_blocking`` has ``append``'s meaning exactly (fenced, idempotent on retry);
    the committer runs it in the same worker-thread job as the page's checksum, so a
    large page costs one hand-off to a thread and back, not two (the file store).
    """

    def append_blocking(
        self, lease: Lease, chunk: int, *, expected_offset: int, data: bytes | bytearray
    ) -> None: ...
