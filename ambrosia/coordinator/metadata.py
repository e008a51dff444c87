"""The one writer of an instance's metadata record, for the life of a runtime.

Three things change the record while a runtime runs: the start (points it at the
checkpoint recovery loaded and records the new chunk), the committer's chunk switch
(records the next chunk after creating it, before its first page) and every checkpoint
(points the record at it and raises the range's first chunk to what the kept
checkpoints still need, before retention deletes anything). The switch and the
checkpoint run concurrently, and the record is replaced by compare-and-swap on its
version, so they take turns here: each change is computed from the record as last
written, under one lock, and swapped against that record's version.

A swap whose reply was lost (a timeout after it landed) looks like a lost race on its
retry; the record is read back and, when it is exactly what this keeper meant to
write, the swap counts as done. Any other record is another writer's: the error stands
and the runtime stops (a stale primary must not keep going).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

from ambrosia.backends.base import ChunkRange, Lease, LogStore, Meta
from ambrosia.backends.retry import DEFAULT_RETRY_POLICY, RetryPolicy, call_with_retry
from ambrosia.errors import PreconditionFailedError

__all__ = ["PRIMARY_FIELDS", "MetadataKeeper"]

# The keys of ``Meta.extra`` that name the life writing the log (``record_start``).
PRIMARY_FIELDS = ("primary.address", "primary.pid", "primary.host", "primary.started")


class MetadataKeeper:
    """Serialized compare-and-swap updates of one instance's ``Meta`` (module docstring)."""

    def __init__(
        self,
        store: LogStore,
        lease: Callable[[], Lease],
        *,
        meta: Meta | None,
        version: str | None,
        policy: RetryPolicy = DEFAULT_RETRY_POLICY,
    ) -> None:
        self._store = store
        self._lease = lease
        self._policy = policy
        self.meta = meta
        self.version = version
        self._turn = asyncio.Lock()
        # (checkpoint number, fields): ``record_fields_from``.
        self._fields_from: tuple[int, tuple[tuple[str, str], ...]] | None = None

    def record_fields_from(self, checkpoint: int, fields: tuple[tuple[str, str], ...]) -> None:
        """Record ``fields`` in ``Meta.extra`` in the swap that points at checkpoint
        ``checkpoint`` or a later one, replacing the values of the same keys; never in an
        earlier swap. A live upgrade records the new code's version this way, so the log
        names it exactly when a checkpoint of the new code is the one recovery loads
        (``ambrosia.upgrade``)."""
        self._fields_from = (checkpoint, fields)

    def _with_fields(
        self, number: int, extra: tuple[tuple[str, str], ...]
    ) -> tuple[tuple[str, str], ...]:
        if self._fields_from is None or number < self._fields_from[0]:
            return extra
        fields = self._fields_from[1]
        keys = {key for key, _ in fields}
        return tuple(pair for pair in extra if pair[0] not in keys) + fields

    async def record_start(
        self,
        checkpoint: int,
        chunks: ChunkRange,
        primary: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """Point at the checkpoint this life started from; record its chunk range.

        ``primary``: who this life is (``PRIMARY_FIELDS``: address, process, host), in
        ``Meta.extra``, replacing the previous life's: peers and ``ambrosia status``
        read the current primary there.
        """

        def started(old: Meta | None) -> Meta:
            kept = tuple(pair for pair in self._extra(old) if pair[0] not in PRIMARY_FIELDS)
            return Meta(checkpoint, 0, kept + primary, chunks)

        await self._swap(started)

    async def record_chunk(self, number: int) -> None:
        """Record chunk ``number`` (created, nothing written yet) as the log's newest."""

        def extended(old: Meta | None) -> Meta:
            assert old is not None and old.chunks is not None, "the start records a range"
            if number != old.chunks.last + 1:
                raise AssertionError(f"chunk {number} does not follow chunks {old.chunks}")
            return dataclasses.replace(old, chunks=ChunkRange(old.chunks.first, number))

        await self._swap(extended)

    async def record_checkpoint(
        self, number: int, first_chunk: int, extra: tuple[tuple[str, str], ...] = ()
    ) -> None:
        """Point at checkpoint ``number``; chunks before ``first_chunk`` are no longer needed.

        ``extra``: ``Meta.extra`` fields to set with it (replacing those of the same keys).
        """

        def pointed(old: Meta | None) -> Meta:
            kept = self._extra(old)
            if extra:
                keys = {key for key, _ in extra}
                kept = tuple(pair for pair in kept if pair[0] not in keys) + extra
            kept = self._with_fields(number, kept)
            if old is None or old.chunks is None:
                # The first checkpoint of a new log: no chunk exists yet.
                return Meta(number, 0, kept, ChunkRange(first_chunk, first_chunk - 1))
            first = min(max(old.chunks.first, first_chunk), old.chunks.last + 1)
            return dataclasses.replace(
                old, checkpoint=number, chunks=ChunkRange(first, old.chunks.last), extra=kept
            )

        await self._swap(pointed)

    @staticmethod
    def _extra(old: Meta | None) -> tuple[tuple[str, str], ...]:
        return () if old is None else old.extra

    async def _swap(self, change: Callable[[Meta | None], Meta]) -> None:
        async with self._turn:
            lease = self._lease()
            new = dataclasses.replace(change(self.meta), epoch=lease.epoch)
            if new == self.meta:
                return
            expected = self.version
            version: str | None
            try:
                version = await call_with_retry(
                    lambda: self._store.swap_meta(lease, expected=expected, new=new), self._policy
                )
            except PreconditionFailedError:
                current, version = await call_with_retry(self._store.read_meta, self._policy)
                if current != new or version is None:
                    raise
            self.meta, self.version = new, version
