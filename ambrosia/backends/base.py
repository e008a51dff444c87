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
from typing import Protocol


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
class Meta:
    """The instance's metadata record.

    ``checkpoint``: the latest complete checkpoint recovery starts from (None before the
    first). ``epoch``: the epoch of the writer that last swapped it. ``extra``: small
    string fields for the coordinator (format version and the like).
    """

    checkpoint: int | None
    epoch: int
    extra: tuple[tuple[str, str], ...] = ()


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
