"""Hot standbys: replay the primary's log as it grows, take over when its lease is free.

Several processes may run one instance (``ambrosia run NAME --role auto|primary|standby``).
The one holding the log's writer lease is the primary; the others are standbys. A standby
(``StandbyRuntime``) does what a cold start does up to the replay, without the lease:

1. audit the log and load the latest checkpoint (``recovery.recover``, the same audit
   every start runs; it is safe beside a live writer);
2. replay the pages after it through the binding, impulses refused, outputs kept in
   their streams and dropped as the trim points logged by the primary say they were
   consumed (exactly what recovery does, page by page instead of all at once);
3. tail the log (``LogTail``): read what the primary appended since the last read and
   replay it, every ``StandbySettings.poll_interval_s``; between reads, try the lease
   (without waiting) every ``lease_poll_interval_s``, or just after the moment the
   store says the holder's lease runs out when that comes sooner (s3).

When the lease is free (the primary died; a cloud lease also has to run out), the standby
takes it. The store fences the old writer at that moment (file: the old holder is gone,
its flock with it; s3: fences at the end of its chunks; azblob: the blob lease), so the
log cannot grow any more: the standby reads the last pages, then starts its own chunk and
serves (``Runtime.open_for_writing``), with the application state already current. No
cold recovery: the takeover costs one tail read, a chunk creation, a metadata swap and a
listen, not a replay of everything since the last checkpoint.

How each backend is tailed
--------------------------
The same calls on every backend: ``read_chunk(chunk, offset=end_of_what_was_read)``
while the chunk grows, ``list_chunks`` when it stopped growing (has the primary moved to
a newer chunk?). A chunk is final once a newer one exists (one write in flight per
writer, and a writer creates chunk N + 1 only after its last write into N returned;
a takeover fences N before creating N + 1), so after seeing N + 1 the standby reads N
once more, then moves on. Per backend that means:

- file: a ``pread`` from the offset (a mounted Azure Files share works the same way);
  a listing is a directory scan;
- azblob: a ranged download of the append blob from the offset (``download_blob(offset)``),
  an empty answer when it did not grow; a listing is a blob listing with lengths;
- s3: a GET of the page object named by the offset (one object per append, named by
  its offset), then of the next, until one is missing or is a fence
  (``S3Store.read_chunk_tail``).

A page caught half written (a reader racing an append) looks like a torn tail: the
standby stops before it and reads it again next time. A chunk deleted by retention
before the standby read it (a standby that was down, or paused, for long) means it is
behind the retention window: it says so and reloads from the latest checkpoint.

Where a standby is
------------------
``replayed_sequence`` (the last page replayed) against the log's last page, in pages
and in seconds since the standby last saw the log end where it is now. Every
``report_interval_s`` it logs where it is; ``ambrosia status`` shows the same from the
replica board (``ambrosia.coordinator.replicas``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from ambrosia.backends.base import ChunkRange, LogStore, Meta
from ambrosia.backends.retry import RetryPolicy, call_with_retry
from ambrosia.coordinator.checkpointer import Adopter, CandidateWriter, area_of
from ambrosia.coordinator.listener import Listener
from ambrosia.coordinator.metadata import MetadataKeeper
from ambrosia.coordinator.recovery import recover
from ambrosia.coordinator.replicas import ReplicaNote, board_of, local_replica_id, prune_notes
from ambrosia.coordinator.runtime import Runtime
from ambrosia.errors import (
    AmbrosiaError,
    ConfigError,
    FenceError,
    LeaseHeldError,
    LogGapError,
    NotFoundError,
    PreconditionFailedError,
)
from ambrosia.log.page import Page, scan_chunk
from ambrosia.protocol.checkpoint import CheckpointState
from ambrosia.protocol.recovery_plan import plan_recovery
from ambrosia.protocol.selfcalls import SelfCallAudit

__all__ = ["ROLES", "BehindRetentionError", "LogTail", "Role", "StandbyRuntime", "StandbySettings"]

logger = logging.getLogger("ambrosia.role")
coordinator_logger = logging.getLogger("ambrosia.coordinator")

Role = Literal["auto", "primary", "standby"]
ROLES: tuple[Role, ...] = ("auto", "primary", "standby")


@dataclass(frozen=True, slots=True)
class StandbySettings:
    """How a standby follows the log and takes over (unit last in every name).

    ``poll_interval_s``: between tail reads when the last one found nothing new; each
    costs a read (and, when the chunk did not grow, a listing): see docs/high-availability.md
    for what that costs per second on the cloud stores. ``lease_poll_interval_s``: between
    attempts to take the lease; a takeover starts at most this long after the lease is
    free. ``listen_busy_s``: how long a new primary retries its registered address when
    another process (an old primary, paused) still holds it, before it listens on a free
    port of the same host and publishes that address instead.
    """

    poll_interval_s: float = 0.02
    lease_poll_interval_s: float = 0.05
    report_interval_s: float = 5.0
    board_interval_s: float = 1.0
    note_stale_after_s: float = 60.0
    listen_busy_s: float = 2.0
    listen_retry_delay_s: float = 0.05

    @classmethod
    def for_log(cls, log_url: str, poll_interval_s: float | None = None) -> StandbySettings:
        """The defaults for a log URL: a local file is read every 20 ms and its lease tried
        every 50 ms (a few syscalls each); a cloud store every 250 ms (each read and each
        lease attempt is a billed request: see docs/high-availability.md)."""
        local = log_url.startswith(("file:", "memory:"))
        poll = poll_interval_s if poll_interval_s is not None else (0.02 if local else 0.25)
        lease = min(0.05, poll) if local else max(poll, 0.25)
        return cls(poll_interval_s=poll, lease_poll_interval_s=lease)

    def __post_init__(self) -> None:
        for name in (
            "poll_interval_s",
            "lease_poll_interval_s",
            "report_interval_s",
            "board_interval_s",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"standby setting {name} must be positive")
        if self.listen_busy_s < 0 or self.listen_retry_delay_s <= 0:
            raise ConfigError("standby setting listen_busy_s must be >= 0, its retry delay > 0")


_LISTING_EVERY_IDLE_POLLS = 5
# A lease attempt timed to the store's expiry comes this long after it (clock steps).
_LEASE_EXPIRY_MARGIN_S = 0.01


class BehindRetentionError(AmbrosiaError):
    """The chunk a standby reads next was deleted by retention: reload from a checkpoint."""


class LogTail:
    """The pages a live writer appends, in order, from ``(chunk, offset)`` on.

    ``poll`` returns what was appended since the last call (possibly across chunks) and
    an empty list when nothing was. Pages are checked to continue the sequence.
    """

    def __init__(
        self,
        store: LogStore,
        *,
        instance_id: int,
        page_bytes_max: int,
        policy: RetryPolicy,
        chunk: int,
        offset: int,
        next_sequence: int,
    ) -> None:
        self.store = store
        self.instance_id = instance_id
        self.page_bytes_max = page_bytes_max
        self.policy = policy
        self.chunk = chunk
        self.offset = offset
        self.next_sequence = next_sequence
        self.reads = 0
        self.listings = 0
        self._idle_polls = 0

    async def poll(self, *, final: bool = False) -> list[tuple[int, Page]]:
        """New pages; ``final``: the writer is fenced, look for later chunks every time."""
        pages = await self._read_current()
        if not pages and not final:
            # The writer moves to a new chunk once per checkpoint: a look for it on every
            # idle read would add a read to each of an idle standby's on a cloud store, so
            # it looks on every fifth. But on each of the first five empty reads after
            # pages: a writer that was busy and stopped in this chunk most likely went on
            # to the next (its metadata names it a moment later), where a checkpointer
            # standby takes its candidate (waiting five reads for it, over a second on a
            # cloud store, let the primary's wait run out).
            self._idle_polls += 1
            if (
                self._idle_polls > _LISTING_EVERY_IDLE_POLLS
                and self._idle_polls % _LISTING_EVERY_IDLE_POLLS
            ):
                return pages
        while not pages:
            later = await self._later_chunk()
            if later is None:
                return pages
            # The writer moved on: this chunk is final. Read it once more, then go on.
            pages = await self._read_current()
            self.chunk, self.offset = later, 0
            pages += await self._read_current()
            if not pages and await self._later_chunk() is None:
                return pages
        self._idle_polls = 0
        return pages

    async def _later_chunk(self) -> int | None:
        # The metadata records a chunk before its first page: one small read says whether
        # the writer moved on; the listing (on s3, of every page object) only when it did.
        meta, _ = await call_with_retry(self.store.read_meta, self.policy)
        if meta is not None and meta.chunks is not None and meta.chunks.last <= self.chunk:
            return None
        self.listings += 1
        try:
            listed = await call_with_retry(self.store.list_chunks, self.policy)
        except NotFoundError:
            # Retention deleted an object the listing had named (s3 looks at a chunk's
            # last object): nothing is lost, the next poll lists again.
            return None
        later = [info.number for info in listed if info.number > self.chunk]
        return min(later) if later else None

    async def _read_current(self) -> list[tuple[int, Page]]:
        chunk = self.chunk
        self.reads += 1
        tail_reader = getattr(self.store, "read_chunk_tail", None)
        try:
            if tail_reader is not None:
                data = await call_with_retry(lambda: tail_reader(chunk, self.offset), self.policy)
            else:
                data = await call_with_retry(
                    lambda: self.store.read_chunk(chunk, offset=self.offset), self.policy
                )
        except NotFoundError as error:
            meta, _ = await call_with_retry(self.store.read_meta, self.policy)
            if meta is not None and meta.chunks is not None and chunk < meta.chunks.first:
                raise BehindRetentionError(
                    f"{self.store.instance}: chunk {chunk} was deleted by retention (the log "
                    f"now holds chunks {meta.chunks}) before this standby read it"
                ) from error
            return []  # not created yet
        if not data:
            return []
        where = f"{self.store.url} {self.store.instance} chunk {chunk} from offset {self.offset}"
        scan = scan_chunk(
            data, where=where, instance_id=self.instance_id, page_bytes_max=self.page_bytes_max
        )
        pages = []
        for page in scan.pages:
            if page.sequence != self.next_sequence:
                raise LogGapError(
                    f"{self.store.instance}: page {page.sequence} at {where}+{page.offset} "
                    f"where page {self.next_sequence} was next"
                )
            self.next_sequence += 1
            pages.append((chunk, page))
        self.offset += scan.valid_bytes
        return pages


class StandbyRuntime(Runtime):
    """A runtime that starts as a hot standby unless it finds the lease free (module doc).

    ``role``: ``auto`` takes the lease if it is free at start (a cold recovery, as
    ``Runtime``), else follows as a standby; ``standby`` always starts as a standby (it
    waits for a log to exist). ``start`` returns once this process is primary.
    """

    def __init__(
        self,
        *args: Any,
        role: Role = "auto",
        standby: StandbySettings | None = None,
        on_listening: Callable[[str], Awaitable[None]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.on_listening = on_listening
        if role not in ROLES:
            raise ConfigError(f"role {role!r}: expected one of {', '.join(ROLES)}")
        self.role: Role = role
        self.settings = standby or StandbySettings()
        self.current_role: Literal["primary", "standby", "starting"] = "starting"
        self.tail: LogTail | None = None
        self.log_end_sequence = -1  # the newest page seen in the log
        self.log_end_seen_at = 0.0  # monotonic time the standby last caught up with it
        self.takeover_started_at = 0.0
        self._self_audit: SelfCallAudit | None = None
        self._board = board_of(self.store)
        self.replica_id = local_replica_id()
        self._noted = False
        self._loaded_checkpoint: CheckpointState | None = None
        self._lease_free_in_s: float | None = None
        # Checkpoints taken by a standby (``ambrosia.coordinator.checkpointer``): written
        # while this process is a checkpointer standby, adopted while it is primary.
        area = area_of(self.store)
        if self.config.checkpointer and area is None:
            raise ConfigError(f"{self.store.url}: this log store cannot hold candidate checkpoints")
        if self.config.checkpointer and role == "primary":
            raise ConfigError("--checkpointer is a standby's work: not with --role primary")
        self.candidates = (
            CandidateWriter(self, area) if area is not None and self.config.checkpointer else None
        )
        self.adopter = Adopter(self, area) if area is not None else None
        # The version of the application code (``ambrosia.upgrade``; None: undeclared):
        # candidates are adopted only from a checkpointer of the same version.
        self.code_version: int | None = None

    # -- roles -----------------------------------------------------------------------------

    def _announce(self, role: Literal["primary", "standby"], detail: str) -> None:
        self.current_role = role
        logger.info("%s: role %s (%s)", self.instance, role, detail)

    @property
    def replayed_sequence(self) -> int:
        return self.delivered_sequence

    def lag(self) -> tuple[int, float]:
        """Pages behind the newest page seen, and seconds since it was caught up."""
        pages = max(0, self.log_end_sequence - self.delivered_sequence)
        seconds = 0.0 if pages == 0 else time.monotonic() - self.log_end_seen_at
        return pages, seconds

    # -- start -------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._become_primary_somehow()
        if self.adopter is not None:
            self.adopter.start()
        if self.on_listening is not None:
            address = f"{self.listen_address[0]}:{self.bound_port}"
            try:
                await self.on_listening(address)
            except AmbrosiaError as error:
                logger.warning("%s: cannot publish address %s: %s", self.instance, address, error)

    async def _become_primary_somehow(self) -> None:
        policy = self.config.retry_policy
        if self.role == "primary":
            # No standby phase: wait for the lease (``Config.lease_wait_s``), recover cold.
            await super().start()
            assert self.lease is not None
            self._announce("primary", f"epoch {self.lease.epoch}")
            return
        if self.role == "auto":
            try:
                self.lease = await call_with_retry(
                    lambda: self.store.acquire_lease(wait_s=0.0), policy
                )
            except LeaseHeldError:
                pass
            else:
                await self.start_holding_lease()
                self._announce("primary", f"the lease was free, epoch {self.lease.epoch}")
                return
        await self._follow()

    async def _load(self) -> bool:
        """Load the latest checkpoint and the pages after it; False if no log exists yet."""
        policy = self.config.retry_policy
        reading = await recover(self.store, self.config.page_bytes_max, policy)
        if reading.checkpoint is None:
            return False
        checkpoint = reading.checkpoint
        self._forget_state()
        self.binding = self._binding_factory(self)
        await self._restore(checkpoint)
        self._loaded_checkpoint = checkpoint
        # The cold start's plan: the marks move past the pages read so far, replay
        # delivers them; the tail's pages are folded in as they come (``_replay_new``).
        plan = plan_recovery(checkpoint, reading.pages)
        self.inputs = plan.marks
        self.delivered_sequence = plan.delivered_sequence
        self_stream = self._open_stream(self.instance)
        self._self_audit = SelfCallAudit(self.instance, [])
        self_stream.on_drop = self._self_audit.check
        self.binding.replaying = True
        if reading.audit is None or not reading.audit.scans:
            chunk = 0 if reading.audit is None else reading.audit.chunks.first
            offset = 0
        else:
            chunk, scan = reading.audit.scans[-1]
            offset = scan.valid_bytes
        next_sequence = plan.next_sequence
        self.tail = LogTail(
            self.store,
            instance_id=self.instance_id,
            page_bytes_max=self.config.page_bytes_max,
            policy=policy,
            chunk=chunk,
            offset=offset,
            next_sequence=next_sequence,
        )
        self.log_end_sequence = next_sequence - 1
        self.log_end_seen_at = time.monotonic()
        await self._replay(reading.pages)
        return True

    def _forget_state(self) -> None:
        """Drop what an earlier load replayed (nothing runs yet: no links, no listener)."""
        if self.binding is not None:
            self.binding.close()
        self.streams = {}
        self._dirty = set()
        self.replayed_pages = 0

    async def _replay_new(self, pages: list[tuple[int, Page]]) -> None:
        """Replay pages the tail read: their marks first (``InputMarks.fold``)."""
        self.inputs.fold(pages)
        await self._replay(pages)

    async def _replay(self, pages: list[tuple[int, Page]]) -> None:
        """What recovery does before and while it replays, for pages read as they come
        (folded into ``self.inputs`` already): the self-call audit learns their self-calls,
        output streams drop what the logged trims say was consumed, then each page is
        delivered."""
        if not pages:
            return
        audit = self._self_audit
        assert audit is not None and self.binding is not None
        audit.add_pages(pages)
        for destination, seq in self.inputs.trims.items():
            self._open_stream(destination).ack(seq)
        self.streams[self.instance].ack(self.inputs.accepted_through(self.instance))
        self._renumber_first_start(audit)
        self.log_end_sequence = max(self.log_end_sequence, pages[-1][1].sequence)
        for _, page in pages:
            await self._deliver(page)
            self.replayed_pages += 1
        self.log_end_seen_at = time.monotonic()

    async def _follow(self) -> None:
        settings = self.settings
        while not await self._load():
            if self.role == "auto" and await self._try_lease():
                await self.start_holding_lease()
                self._announce("primary", "no log yet and the lease was free")
                return
            await asyncio.sleep(settings.lease_poll_interval_s)
        assert self._loaded_checkpoint is not None
        self._announce(
            "standby",
            f"checkpoint {self._loaded_checkpoint.number}, replayed through page "
            f"{self.delivered_sequence}{', checkpointer' if self.candidates else ''}",
        )
        loop = asyncio.get_running_loop()
        next_lease_try = next_report = next_note = loop.time()
        while True:
            now = loop.time()
            if now >= next_lease_try:
                next_lease_try = now + settings.lease_poll_interval_s
                if await self._try_lease():
                    try:
                        await self._promote()
                        return
                    except (FenceError, PreconditionFailedError) as error:
                        # PreconditionFailedError: another writer swapped the metadata.
                        await self._abandon_takeover(error)
                        continue
                next_lease_try = loop.time() + self._next_lease_try_s()
            if now >= next_report:
                next_report = now + settings.report_interval_s
                self._report()
            if now >= next_note:
                next_note = now + settings.board_interval_s
                await self._write_note()
            assert self.tail is not None
            try:
                pages = await self.tail.poll()
            except BehindRetentionError as error:
                logger.warning("%s: standby behind the retention window: %s", self.instance, error)
                await self._reload()
                continue
            if self.candidates is not None:
                # The checkpointer replays them in parts (each part's marks first).
                await self.candidates.replay(pages)
            elif pages:
                await self._replay_new(pages)
            if not pages:
                self.log_end_seen_at = time.monotonic()
                # Not past the next lease attempt: a lease that runs out between two
                # reads is tried when it does, not at the next read.
                await asyncio.sleep(
                    max(0.0, min(settings.poll_interval_s, next_lease_try - loop.time()))
                )

    async def _abandon_takeover(self, error: AmbrosiaError) -> None:
        """The lease went to another standby before this one finished taking over (a
        takeover slower than a short cloud lease). Nothing was served: the replayed state
        still matches the log, so follow it again from where the tail is. A chunk this
        one created stays empty beyond what the metadata records, as after a crash."""
        logger.warning(
            "%s: lost the lease during the takeover, following again as a standby: %s",
            self.instance,
            error,
        )
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(BaseException):
                await self._renewing
            if self._renewing in self._tasks:
                self._tasks.remove(self._renewing)
            self._renewing = None
        if self.server is not None:
            self.server.close()
            self.server = None
        self.lease = None
        self.metadata = None
        self.failure = None
        self.stopped.clear()
        self._announce("standby", f"replayed through page {self.delivered_sequence}")

    async def _reload(self) -> None:
        while not await self._load():
            await asyncio.sleep(self.settings.lease_poll_interval_s)
        assert self._loaded_checkpoint is not None
        self._announce(
            "standby",
            f"reloaded from checkpoint {self._loaded_checkpoint.number}, replayed through "
            f"page {self.delivered_sequence}",
        )

    def _report(self) -> None:
        pages, seconds = self.lag()
        logger.info(
            "%s: standby replayed through page %d (%d pages, %.1f s behind the log)",
            self.instance,
            self.delivered_sequence,
            pages,
            seconds,
        )

    async def _write_note(self) -> None:
        """Where this standby is, on the replica board (advisory: failures only logged)."""
        if self._board is None or self._loaded_checkpoint is None:
            return
        pages, seconds = self.lag()
        note = ReplicaNote(
            replica_id=self.replica_id,
            pid=os.getpid(),
            host=socket.gethostname(),
            role="standby",
            checkpoint=self._loaded_checkpoint.number,
            replayed_sequence=self.delivered_sequence,
            log_end_sequence=self.log_end_sequence,
            lag_pages=pages,
            lag_s=round(seconds, 3),
            updated=time.time(),
        )
        try:
            if not self._noted:
                await prune_notes(self._board, self.settings.note_stale_after_s)
            await self._board.write_replica_note(self.replica_id, note.encode())
            self._noted = True
        except AmbrosiaError as error:
            logger.debug("%s: replica note not written: %s", self.instance, error)

    async def _remove_note(self) -> None:
        if self._board is None or not self._noted:
            return
        self._noted = False
        try:
            await self._board.remove_replica_note(self.replica_id)
            # The notes of standbys that died unnoticed (a SIGKILL) go too.
            await prune_notes(self._board, self.settings.note_stale_after_s)
        except AmbrosiaError as error:
            logger.debug("%s: replica note not removed: %s", self.instance, error)

    async def stop(self) -> None:
        await self._remove_note()
        if self.candidates is not None and self.current_role != "primary":
            await self.candidates.withdraw()
        if self.adopter is not None:
            await self.adopter.stop()
            if self.adopter.waiting and self._checkpoint_task is not None:
                # Waiting for a candidate, nothing written yet: stop waiting.
                self._checkpoint_task.cancel()
                with contextlib.suppress(BaseException):
                    await self._checkpoint_task
        await super().stop()

    # -- checkpoints taken by a standby (``ambrosia.coordinator.checkpointer``) -------------

    async def _start_checkpoint(self) -> None:
        adopter = self.adopter
        if adopter is None:
            await super()._start_checkpoint()
            return
        await adopter.refresh_if_stale()
        reason = adopter.delegate_reason()
        if reason is not None:
            adopter.checkpointing_itself(reason)
            await super()._start_checkpoint()
            return
        committer = self.committer
        binding = self.binding
        assert committer is not None and binding is not None and adopter.status is not None
        binding.checkpoint_requested = False
        # No snapshot here: the new chunk only. The checkpointer takes checkpoint N at a
        # quiescent page boundary of its own inside chunk N.
        number = committer.chunk + 1
        first_sequence = committer.next_sequence
        committer.switch_chunk(number)
        coordinator_logger.info(
            "%s: checkpoint %d left to checkpointer %s (chunk %d starts at page %d)",
            self.instance,
            number,
            adopter.status.replica_id,
            number,
            first_sequence,
        )
        self._checkpoint_task = asyncio.get_running_loop().create_task(
            self._wait_for_candidate(adopter, number, first_sequence)
        )

    async def _wait_for_candidate(self, adopter: Adopter, number: int, first_sequence: int) -> None:
        try:
            await adopter.adopt(number, first_sequence)
        finally:
            self._checkpoint_task = None

    async def _adopt_checkpoint(
        self, number: int, data: bytes, replica: str, started: float
    ) -> None:
        """Write a verified candidate as checkpoint ``number`` (resuming in chunk
        ``number``), point the metadata at it and retire, as ``_write_checkpoint`` does."""
        assert self.lease is not None and self.metadata is not None
        lease = self.lease
        try:
            kept = [*self.checkpoints, (number, number)][-self.config.checkpoints_kept :]
            first_kept_chunk = min(chunk for _, chunk in kept)
            await call_with_retry(
                lambda: self.store.write_checkpoint(lease, number, data), self.config.retry_policy
            )
            await self.metadata.record_checkpoint(
                number, first_kept_chunk, (("checkpoint.adopted", f"{number} {replica}"),)
            )
            self.metrics.checkpoint_written(len(data), time.perf_counter() - started)
            retire = len(self.checkpoints) + 1 > len(kept)
            self.checkpoints = kept
            coordinator_logger.info(
                "%s: checkpoint %d adopted from checkpointer %s (%d bytes, %.1f ms)",
                self.instance,
                number,
                replica,
                len(data),
                (time.perf_counter() - started) * 1000,
            )
            if retire:
                await self._retain(first_kept_chunk, min(n for n, _ in kept))
        except AmbrosiaError as error:
            if error.retriable:
                coordinator_logger.warning(
                    "%s: checkpoint %d postponed: %s", self.instance, number, error
                )
                return
            coordinator_logger.critical("%s: checkpoint failed: %s", self.instance, error)
            self.failure = error
            self.stopped.set()

    def _next_lease_try_s(self) -> float:
        """Until the next lease attempt: ``lease_poll_interval_s``, or sooner when the
        store said when the lease runs out (s3's lock carries its expiry time): then
        just after that moment, so a dead primary is replaced as soon as its lease
        allows rather than up to an interval later. Only when to ask: whether the lease
        is free is still decided by the store, as at every attempt."""
        interval_s = self.settings.lease_poll_interval_s
        if self._lease_free_in_s is None:
            return interval_s
        return min(interval_s, max(0.0, self._lease_free_in_s) + _LEASE_EXPIRY_MARGIN_S)

    async def _try_lease(self) -> bool:
        try:
            self.lease = await call_with_retry(
                lambda: self.store.acquire_lease(wait_s=0.0), self.config.retry_policy
            )
        except LeaseHeldError as error:
            self._lease_free_in_s = error.free_in_s
            return False
        self.takeover_started_at = time.monotonic()
        coordinator_logger.info("%s: lease taken, epoch %d", self.instance, self.lease.epoch)
        self.start_renewing()
        return True

    # -- takeover --------------------------------------------------------------------------

    async def _promote(self) -> None:
        """The lease is ours and the old writer fenced: read the rest and serve."""
        await self._remove_note()
        if self.candidates is not None:
            await self.candidates.withdraw()
        assert self.lease is not None and self.tail is not None
        policy = self.config.retry_policy
        while True:
            try:
                pages = await self.tail.poll(final=True)
            except BehindRetentionError as error:
                # Holding the lease, the log is stable: a cold start from it is exact.
                logger.warning("%s: standby behind the retention window: %s", self.instance, error)
                self._forget_state()
                await self.start_holding_lease()
                self._announce("primary", "took over with a cold recovery")
                return
            if not pages:
                break
            await self._replay_new(pages)
        meta, version = await call_with_retry(self.store.read_meta, policy)
        if meta is None or meta.checkpoint is None or meta.chunks is None:
            raise LogGapError(f"{self.instance}: the log lost its metadata during the takeover")
        self.metadata = MetadataKeeper(
            self.store, self._current_lease, meta=meta, version=version, policy=policy
        )
        listed_checkpoints = await call_with_retry(self.store.list_checkpoints, policy)
        loaded = self._loaded_checkpoint
        assert loaded is not None
        # As a cold start: the kept checkpoints count for retention, their resume chunk
        # taken as N - 1 unless known.
        kept = {(n, max(n - 1, 0)) for n in listed_checkpoints if n <= meta.checkpoint}
        kept.discard((loaded.number, max(loaded.number - 1, 0)))
        kept.add((loaded.number, loaded.resume_chunk))
        self.checkpoints = sorted(kept)[-self.config.checkpoints_kept :]
        listed = await call_with_retry(self.store.list_chunks, policy)
        last = max([meta.chunks.last, *(info.number for info in listed)])
        await self._before_serving()
        # Becoming primary asks for a checkpoint, taken in the background like any other:
        # every takeover starts a chunk, and without one the chunks of a string of quick
        # failovers are never retired (on s3 each one costs requests at every takeover).
        await self.open_for_writing(
            checkpoint=meta.checkpoint,
            chunks=ChunkRange(meta.chunks.first, last + 1),
            next_sequence=self.tail.next_sequence,
        )
        took_ms = (time.monotonic() - self.takeover_started_at) * 1000
        self._announce(
            "primary",
            f"took over at epoch {self.lease.epoch} after page {self.delivered_sequence}, "
            f"listening on {self.listen_address[0]}:{self.bound_port}, in {took_ms:.0f} ms",
        )

    async def _before_serving(self) -> None:
        """The log is read to its end under the lease and nothing is served yet: the
        moment a live upgrade (``ambrosia.upgrade``) swaps the application."""

    async def bind_listener(self, host: str, port: int) -> Listener:
        """The registered address; while an earlier life holds it, a free port.

        An earlier primary of this instance that is paused (SIGSTOP, a frozen VM) keeps
        its listening socket while its lease runs out. When the address is busy and the
        log's metadata names it as the previous primary's, this retries it for
        ``listen_busy_s``, then listens on a free port of the same host: the address
        is published (``on_listening``: the catalog) and recorded in the metadata, and
        peers re-read the catalog as they dial. Any other busy address is refused as
        before (``OSError``: the start fails with "cannot listen").
        """
        try:
            return await super().bind_listener(host, port)
        except OSError as error:
            meta = None if self.metadata is None else self.metadata.meta
            previous = current_primary(meta).get("address")
            if port == 0 or previous != f"{host}:{port}":
                raise
            busy = error
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.listen_busy_s
        while loop.time() < deadline:
            await asyncio.sleep(self.settings.listen_retry_delay_s)
            try:
                return await super().bind_listener(host, port)
            except OSError as error:
                busy = error
        logger.warning(
            "%s: cannot listen on %s:%d, still held by an earlier primary (%s); listening "
            "on a free port of %s and publishing that address",
            self.instance,
            host,
            port,
            busy,
            host,
        )
        return await super().bind_listener(host, 0)


def current_primary(meta: Meta | None) -> dict[str, str]:
    """The ``primary.*`` fields of a metadata record (``MetadataKeeper.record_start``)."""
    if meta is None:
        return {}
    return {
        key.removeprefix("primary."): value
        for key, value in meta.extra
        if key.startswith("primary.")
    }
