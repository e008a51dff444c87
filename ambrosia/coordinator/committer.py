"""Group commit: many inputs, one page, one durable write at a time.

Inputs from every connection (and self-calls and impulses) are copied into the page
being filled while the previous page's write is in flight. When that write completes,
the page being filled is sealed and written next: under light load a page carries one
call and goes out at once; under heavy load it carries everything that arrived during
the previous write. No timers. Streaming large pages (a megabyte and more) to a store
that appends in one blocking call (the file store), a page that fills up while the
previous one is being written is sealed then and queued behind it on the committer's
writer thread, which goes from one write to the next without waiting for the event
loop; still one write at a time, in page order, and a queued page writes nothing if the
one before it failed (it is retried after that one).

Only after a page is durable does anything see it: it is queued for delivery to the
binding (in page order) and each source is told how far its input is now durable (so it
can acknowledge to the sender). Everything is bounded: the page by ``page_bytes_max``
(``try_add`` refuses what does not fit and the caller stops reading its socket until
there is room).

Logging never waits for the application. If the dispatcher falls behind (for example
because its own output is blocked waiting for a peer's acknowledgements), durable pages
keep being written and acknowledged; beyond ``delivery_pages_max`` pages held in memory
the queue keeps only where each page lives, and the dispatcher reads it back from the
log when it gets there. The log is the queue. That is what rules out the deadlock of two
immortals whose output to each other is full: acknowledgements depend only on logging,
never on dispatch. The backlog itself is bounded by ``delivery_backlog_bytes_max``
(input stops being read beyond it). Without persistence (a benchmark switch) pages
cannot be read back, so the writer waits for delivery room instead.

A chunk switch (``switch_chunk``, asked for by a checkpoint) takes effect with the next
page sealed: the chunk is created, then ``on_new_chunk`` records it in the metadata, then
the page is appended, so the metadata always knows every chunk that holds a page
(``ambrosia.coordinator.recovery``).

A write that fails because the lease or the fence was lost stops the committer for good
(``failed``): a stale primary must not keep writing or executing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ambrosia.backends.base import BlockingAppend, Lease, LogStore
from ambrosia.backends.retry import DEFAULT_RETRY_POLICY, RetryPolicy, call_with_retry
from ambrosia.coordinator.metrics import CoordinatorMetrics
from ambrosia.errors import AmbrosiaError, StorageUnavailableError
from ambrosia.log.page import Page, PageBuilder, decode_page, seal_page
from ambrosia.protocol.inputs import InputMarks

logger = logging.getLogger("ambrosia.committer")

_SEAL_IN_THREAD_BYTES_MIN = 1 << 20
# Large-page writes in flight at once: the one being written and the one queued behind it.
_IN_FLIGHT_MAX = 2


class _PredecessorFailed(StorageUnavailableError):
    """A queued page's write did not run: the page before it failed (retried in order)."""


@dataclass(slots=True)
class _Write:
    """A page sealed and on its way: where it goes and what its durability releases."""

    data: bytearray | bytes
    chunk: int
    offset: int
    marks: dict[str, int]
    started: float
    job: Callable[[], None] | None
    first: asyncio.Future[None] | None
    failing: bool = False  # its last attempt raised (set on the writer thread)


@dataclass(frozen=True, slots=True)
class DurablePage:
    """A page that is durable, with where it lives; ``page`` is None once spilled."""

    chunk: int
    offset: int
    size_bytes: int
    page: Page | None


class Committer:
    def __init__(
        self,
        store: LogStore,
        lease: Lease,
        *,
        instance_id: int,
        chunk: int,
        next_sequence: int,
        page_bytes_max: int,
        delivery_pages_max: int,
        delivery_backlog_bytes_max: int = 1 << 30,
        on_durable: Callable[[dict[str, int]], None],
        collect_trims: Callable[[], list[tuple[str, int]]],
        inputs: InputMarks,
        chunk_bytes_max: int,
        on_chunk_full: Callable[[], None],
        on_new_chunk: Callable[[int], Awaitable[None]] | None = None,
        persist: bool = True,
        retry_policy: RetryPolicy = DEFAULT_RETRY_POLICY,
        metrics: CoordinatorMetrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.store = store
        self.persist = persist  # False only for benchmarks that show what durability costs
        self.retry_policy = retry_policy
        self.lease = lease
        self.instance_id = instance_id
        self.chunk = chunk
        self.chunk_offset = 0
        self.next_sequence = next_sequence
        self.page_bytes_max = page_bytes_max
        self.delivery_pages_max = delivery_pages_max
        self.delivery_backlog_bytes_max = delivery_backlog_bytes_max
        self.backlog_bytes = 0
        self._resident_pages = 0
        self._on_durable = on_durable
        self._collect_trims = collect_trims
        # Per source, the last seq copied into a page (durable or not), and its digest.
        self.inputs = inputs
        self._pending_marks: dict[str, int] = {}
        self.chunk_bytes_max = chunk_bytes_max
        self._on_chunk_full = on_chunk_full
        self._on_new_chunk = on_new_chunk
        self.builder = PageBuilder(page_bytes_max=page_bytes_max)
        self.delivery: deque[DurablePage] = deque()
        self.delivery_ready = asyncio.Event()
        self.delivery_room = asyncio.Event()
        self.delivery_room.set()
        self._room_waiters: list[Callable[[], None]] = []
        self._writing = False
        self._write_task: asyncio.Task[None] | None = None
        self._work = asyncio.Event()
        self._switch_to: int | None = None
        self._next_offset = 0  # where the next page sealed goes in ``chunk``
        self._full = asyncio.Event()  # the page being filled refused a group for room
        self._in_flight: deque[_Write] = deque()
        # The writer thread of large pages (``_write_loop``): one, so that they are
        # written in order; only for stores that append in one blocking call.
        self._writer = (
            ThreadPoolExecutor(1, thread_name_prefix="ambrosia-log-writer")
            if persist and isinstance(store, BlockingAppend)
            else None
        )
        self.failed: BaseException | None = None
        self.pages_written = 0
        self.bytes_written = 0
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def accepted(self) -> dict[str, int]:
        """Per source, the last seq copied into a page (a copy, from ``inputs``)."""
        return self.inputs.accepted

    # -- input -------------------------------------------------------------------------

    def try_add(
        self,
        source: str,
        first_seq: int,
        count: int,
        replayable: int,
        messages: bytes | bytearray | memoryview,
    ) -> bool:
        """Copy a group into the current page; False if it does not fit now.

        A group that does not start right after the last one accepted from ``source`` is
        refused (``InputSequenceError``) before anything is copied.
        """
        if self.failed is not None:
            raise self.failed
        inputs = self.inputs
        inputs.expect(source, first_seq, count)
        if self.builder.body_bytes + len(messages) + 300 > self.page_bytes_max and (
            not self.builder.is_empty
        ):
            self._full.set()  # a write in flight may queue this page behind it now
            self._kick()
            return False
        if self.backlog_bytes > self.delivery_backlog_bytes_max:
            return False
        self.builder.add_group(source, first_seq, count, replayable, messages)
        inputs.record(source, first_seq, count, messages)
        self._pending_marks[source] = first_seq + count - 1
        self._kick()
        return True

    def wait_for_room(self, callback: Callable[[], None]) -> None:
        self._room_waiters.append(callback)

    def add_trim_points(self) -> None:
        for destination, seq in self._collect_trims():
            self.builder.add_trim(destination, seq)

    def switch_chunk(self, number: int) -> None:
        """Write the pages sealed after this call into chunk ``number``."""
        self._switch_to = number

    @property
    def switch_pending(self) -> bool:
        """A chunk switch was asked for and no page has been written to the new chunk yet."""
        return self._switch_to is not None

    # -- the write loop ------------------------------------------------------------------

    def _kick(self) -> None:
        if not self._writing and self.failed is None:
            self._writing = True
            self.idle.clear()
            self._work.set()
            if self._write_task is None:
                self._write_task = asyncio.get_running_loop().create_task(self._write_loop())

    async def _write_loop(self) -> None:
        """One long-lived writer: sleeps until there is input, writes until there is none.

        Large pages on a store that appends in one blocking call are written by the
        committer's own writer thread, and while one is being written the next one is
        queued behind it as soon as it is full (``_pipelined``): the thread goes from one
        page's write to the next without waiting for the event loop in between. Pages
        are still written one at a time and in order; their results are taken in order.
        """
        try:
            while True:
                await self._work.wait()
                self._work.clear()
                while self.builder.group_count or self._in_flight:
                    if self.builder.group_count and (
                        not self._in_flight or (self._full.is_set() and self._pipelined())
                    ):
                        if not self.delivery_room.is_set():
                            await self.delivery_room.wait()
                        self._full.clear()
                        write = await self._start_write()
                        if write is not None:
                            self._in_flight.append(write)
                        continue
                    oldest = self._in_flight[0]
                    assert oldest.first is not None
                    if self._may_queue() and not oldest.first.done() and not self._full.is_set():
                        # Wake when this write ends, or when the next page fills first.
                        full = asyncio.ensure_future(self._full.wait())
                        await asyncio.wait(
                            (oldest.first, full), return_when=asyncio.FIRST_COMPLETED
                        )
                        full.cancel()
                        if not oldest.first.done():
                            continue
                    await self._finish_write(oldest)
                    self._in_flight.popleft()
                self._writing = False
                self.idle.set()
        except AmbrosiaError as error:
            self.failed = error
            logger.critical("log write failed, this process stops being primary: %s", error)
        except BaseException as error:
            self.failed = error
            if not isinstance(error, asyncio.CancelledError):
                logger.critical("log writer crashed", exc_info=error)
            raise
        finally:
            self._writing = False
            self.delivery_ready.set()
            self.idle.set()

    def _may_queue(self) -> bool:
        """Whether another large page may be queued behind the writes in flight (a store
        that appends in one blocking call, no chunk switch pending, room in the queue)."""
        return (
            self._writer is not None
            and self._switch_to is None
            and len(self._in_flight) < _IN_FLIGHT_MAX
        )

    def _pipelined(self) -> bool:
        """Whether the page being filled is to be queued now: a large one (``_may_queue``)."""
        return self._may_queue() and self.builder.body_bytes >= _SEAL_IN_THREAD_BYTES_MIN

    async def _start_write(self) -> _Write | None:
        """Seal the page being filled and start its write. Small pages are written here
        and finished (None is returned); a large page's write is returned in flight."""
        self.add_trim_points()
        if self._switch_to is not None:
            assert not self._in_flight, "a chunk switch waits for the writes in flight"
            number, self._switch_to = self._switch_to, None
            await call_with_retry(
                lambda: self.store.create_chunk(self.lease, number), self.retry_policy
            )
            if self._on_new_chunk is not None:
                # Recorded in the metadata after it exists and before its first page: a
                # recorded chunk that storage lacks is then always damage, never a crash.
                await self._on_new_chunk(number)
            self.chunk = number
            self.chunk_offset = self._next_offset = 0
        sequence = self.next_sequence
        data = self.builder.detach(
            instance_id=self.instance_id, epoch=self.lease.epoch, sequence=sequence
        )
        marks, self._pending_marks = self._pending_marks, {}
        self.next_sequence = sequence + 1
        chunk = self.chunk
        offset = self._next_offset
        self._next_offset = offset + len(data)
        write_started = time.perf_counter()
        store = self.store
        lease = self.lease
        loop = asyncio.get_running_loop()
        if self._writer is not None and len(data) >= _SEAL_IN_THREAD_BYTES_MIN:
            assert isinstance(store, BlockingAppend)
            # Hashing megabytes and writing them: one job on the writer thread, so the
            # page waits for the busy event loop once, not between the hash and the write.
            # The job starts before the inputs waiting for room are woken (they copy into
            # the next page right here, in this turn of the loop). A retry hashes again:
            # the same bytes, the same checksum. A job whose page's predecessor failed
            # writes nothing (``_PredecessorFailed``, retried once that one is written):
            # a page is never durable before the one before it.
            previous = self._in_flight[-1] if self._in_flight else None
            write = _Write(data, chunk, offset, marks, write_started, None, None)

            def seal_and_append() -> None:
                if previous is not None and previous.failing:
                    raise _PredecessorFailed(f"page before offset {offset} not written yet")
                try:
                    seal_page(data)
                    store.append_blocking(lease, chunk, expected_offset=offset, data=data)
                except BaseException:
                    write.failing = True
                    raise
                write.failing = False

            write.job = seal_and_append
            write.first = loop.run_in_executor(self._writer, seal_and_append)
            self._notify_room()
            return write
        if len(data) < _SEAL_IN_THREAD_BYTES_MIN:
            self._notify_room()
            seal_page(data)
        else:
            # Hashing megabytes takes milliseconds: off the event loop, which keeps
            # receiving into the next page meanwhile (xxhash releases the GIL).
            hashed = loop.run_in_executor(None, seal_page, data)
            self._notify_room()
            await hashed
        if self.persist:
            # A retried append whose first attempt did land is recognised by the store
            # (same bytes at the same offset) and succeeds: the ambiguous-write rule.
            await call_with_retry(
                lambda: store.append(lease, chunk, expected_offset=offset, data=data),
                self.retry_policy,
            )
        else:
            await asyncio.sleep(0)
        self._written(data, chunk, offset, marks, write_started)
        return None

    async def _finish_write(self, write: _Write) -> None:
        """Wait for a write started in flight (retrying it as any append) and record it."""
        assert write.first is not None and write.job is not None
        loop = asyncio.get_running_loop()
        job = write.job
        attempts = iter((write.first,))
        await call_with_retry(
            lambda: next(attempts, None) or loop.run_in_executor(self._writer, job),
            self.retry_policy,
        )
        self._written(write.data, write.chunk, write.offset, write.marks, write.started)
        # The next page's job looks at this one (``failing``): keep nothing else alive
        # through it, or every page would hold the one before it.
        write.job = write.first = None
        write.data = b""

    def _written(
        self,
        data: bytes | bytearray,
        chunk: int,
        offset: int,
        marks: dict[str, int],
        started: float,
    ) -> None:
        """A page is durable: count it, queue it for delivery, tell its sources."""
        if self.persist:
            self.chunk_offset = offset + len(data)
        self.pages_written += 1
        self.bytes_written += len(data)
        # Paired check: the page we just wrote must decode as what we meant to write. Its
        # checksum was computed from these bytes by finish(); recomputing it would only
        # lengthen the path between two writes.
        page = decode_page(
            data,
            0,
            f"chunk {chunk}",
            instance_id=self.instance_id,
            page_bytes_max=self.page_bytes_max,
            verify_body=False,
        )
        if self.metrics is not None:
            self.metrics.page_written(
                len(data),
                time.perf_counter() - started,
                sum(group.count for group in page.groups),
            )
        resident = self._resident_pages < self.delivery_pages_max
        if resident:
            self._resident_pages += 1
        elif not self.persist:
            raise AssertionError("without persistence the writer waits for delivery room")
        self.delivery.append(DurablePage(chunk, offset, len(data), page if resident else None))
        self.backlog_bytes += len(data)
        if not self.persist and len(self.delivery) >= self.delivery_pages_max:
            self.delivery_room.clear()
        self.delivery_ready.set()
        if marks:
            self._on_durable(marks)
        if self.chunk_offset >= self.chunk_bytes_max and self._switch_to is None:
            # Not while a switch is pending: a page that was already on its way to the
            # full chunk when the checkpoint asked for a new one must not ask again.
            self._on_chunk_full()

    def take_delivered(self) -> DurablePage | None:
        if not self.delivery:
            self.delivery_ready.clear()
            return None
        durable = self.delivery.popleft()
        if durable.page is not None:
            self._resident_pages -= 1
        self.backlog_bytes -= durable.size_bytes
        if len(self.delivery) < self.delivery_pages_max:
            self.delivery_room.set()
        if self._room_waiters and self.backlog_bytes <= self.delivery_backlog_bytes_max:
            self._notify_room()
        return durable

    def _notify_room(self) -> None:
        waiters, self._room_waiters = self._room_waiters, []
        for waiter in waiters:
            waiter()

    async def drain(self) -> None:
        """Wait until nothing is left to write (used by tests and orderly shutdown)."""
        while self._writing and self.failed is None:
            await self.idle.wait()

    def close(self) -> None:
        if self._write_task is not None:
            self._write_task.cancel()
        if self._writer is not None:
            self._writer.shutdown(wait=False, cancel_futures=True)
