"""Reading a log back: the audit every start runs, and the checkpoint to start from.

Shared by recovery (the runtime), replay checks (``ambrosia.testing.replay``) and the
``ambrosia log`` inspector, so the rules for what a valid log is exist once: whatever
``ambrosia log`` refuses, ``ambrosia run`` refuses with the same error, and the other
way round.

What the metadata promises
--------------------------
The metadata record (``Meta``) names the latest checkpoint and the range of chunks the
log holds (``Meta.chunks``, a ``ChunkRange``). A chunk enters the range after it is
created and before its first page is written (the committer's chunk switch and the
start of every life both record it); retention raises the range's first chunk, in the
same swap that points the metadata at a new checkpoint, before it deletes anything.
So at every moment, crash or not:

- every chunk in the range exists in storage (it may be empty);
- a chunk beyond the range is empty: created by a writer that died before recording
  it, or pre-created by a lease takeover. It never held a page;
- a chunk below the range is a retention leftover (a crash between the swap and the
  delete); nothing needs it, nothing reads it.

The audit (``audit_chunks``)
----------------------------
1. A chunk the range names that storage lacks: ``LogGapError`` naming it. (This is a
   deleted newest chunk: nothing later in the log can show that it is gone.)
2. A chunk beyond the range that holds bytes: ``LogCorruptError`` naming it. Pages are
   only ever written into recorded chunks, so these came from somewhere else (a
   restored or copied file).
3. Every chunk in the range is scanned (``ambrosia.log.page.scan_chunk``): a bad page
   that is not the torn tail, a page of another instance, a page sequence that does not
   go up by one inside the chunk: ``LogCorruptError`` naming chunk and byte offset.
4. The whole range as one log (``check_sequence``): page sequences continue from chunk
   to chunk (swapped or reordered chunk files break this), epochs never go down, and a
   range that starts at chunk 0 starts at page 0: ``LogGapError`` naming both ends.

The range is the whole kept log, not only what the latest checkpoint replays: the
older kept checkpoint is the fallback below, and damage anywhere in what the metadata
says is kept is damage an operator must look at before the instance runs again.

A record written before ``Meta.chunks`` existed has no range: the audit takes the
listed chunks as the range (the rules above minus rules 1 and 2 for the newest chunk,
which such a record cannot support) and warns; the start then records a range, so the
next start is exact.

Anchoring a checkpoint (``pages_after``)
----------------------------------------
Checkpoint N resumes at page ``S`` in chunk ``R`` (N, or N - 1 when page S was already
sealed into the previous chunk when the snapshot was taken). ``R`` must lie in the
range or be the chunk right after it (nothing was written after the checkpoint);
pages in chunks before ``R`` come before S; pages in chunks after ``R``, and in ``R``
itself when R = N, come at or after S; and the first page at or after S is S. A page in
the wrong place means a chunk file that does not belong there: ``LogGapError``.

Which checkpoint (``recover``)
------------------------------
The metadata's checkpoint first. If it cannot be used (missing, bad checksum,
undecodable, another instance's, or its anchoring fails), the next older kept
checkpoint is tried, and so on: the log from an older checkpoint replays to the same
state (replay is deterministic), so it loses nothing as long as the audit passed. The
fallback is logged as a WARNING naming both checkpoints. When no kept checkpoint can be
used, the latest one's error is raised, naming the others that were tried.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from ambrosia.backends.base import ChunkInfo, ChunkRange, LogStore, Meta
from ambrosia.backends.retry import DEFAULT_RETRY_POLICY, RetryPolicy, call_with_retry
from ambrosia.errors import LogCorruptError, LogError, LogGapError, NotFoundError
from ambrosia.log.page import ChunkScan, Page, check_sequence, instance_id_for, scan_chunk
from ambrosia.protocol.checkpoint import CheckpointState, decode_checkpoint

__all__ = [
    "ChunkAudit",
    "LogReading",
    "audit_chunks",
    "pages_after",
    "read_checkpoint",
    "read_log",
    "recover",
]

logger = logging.getLogger("ambrosia.recovery")


@dataclass(frozen=True, slots=True)
class ChunkAudit:
    """The chunks of a log that passed the audit (module docstring).

    ``chunks``: the range audited (recorded, or for a record without one, inferred from
    the listing: ``recorded`` False). ``scans``: every chunk of the range, in order.
    ``outside``: listed chunks outside the range (empty leftovers). ``listed_last``:
    the highest chunk number storage lists (-1 if none).
    """

    chunks: ChunkRange
    recorded: bool
    scans: list[tuple[int, ChunkScan]]
    outside: list[ChunkInfo]
    listed_last: int


@dataclass(frozen=True, slots=True)
class LogReading:
    """What recovery starts from: a checkpoint and the audited pages after it.

    ``checkpoint`` is None for a log that never started (no metadata, no pages).
    ``skipped``: newer kept checkpoints that could not be used, newest first, with why.
    ``next_chunk``: the chunk the next life writes into.
    """

    meta: Meta | None
    meta_version: str | None
    checkpoint: CheckpointState | None
    pages: list[tuple[int, Page]]
    audit: ChunkAudit | None
    skipped: list[tuple[int, LogError]]
    next_chunk: int

    @property
    def scans(self) -> list[tuple[int, ChunkScan]]:
        return [] if self.audit is None else self.audit.scans

    @property
    def last_chunk(self) -> int:
        return -1 if self.audit is None else self.audit.chunks.last


def _where(store: LogStore, what: str) -> str:
    return f"{store.url} {store.instance} {what}"


async def read_checkpoint(
    store: LogStore, number: int, policy: RetryPolicy = DEFAULT_RETRY_POLICY
) -> CheckpointState:
    """Checkpoint ``number``, decoded and checked to be this instance's ``number``."""
    where = _where(store, f"checkpoint {number}")
    data = await call_with_retry(lambda: store.read_checkpoint(number), policy)
    state = decode_checkpoint(data, where)
    if state.instance != store.instance or state.number != number:
        raise LogCorruptError(
            where, 0, f"holds checkpoint {state.number} of instance {state.instance!r}"
        )
    return state


async def audit_chunks(
    store: LogStore,
    meta: Meta,
    page_bytes_max: int,
    policy: RetryPolicy = DEFAULT_RETRY_POLICY,
) -> ChunkAudit:
    """Check the chunks ``meta`` records against storage and scan them (module docstring)."""
    listed = await call_with_retry(store.list_chunks, policy)
    numbers = {info.number for info in listed}
    listed_last = max(numbers, default=-1)
    recorded = meta.chunks is not None
    if meta.chunks is not None:
        chunks = meta.chunks
    else:
        logger.warning(
            "%s: the metadata record has no chunk range (written by an older version): "
            "auditing the chunks storage lists, %s; a deleted newest chunk cannot be "
            "noticed until this start records the range",
            store.instance,
            "none" if not numbers else f"{min(numbers)}..{listed_last}",
        )
        chunks = ChunkRange(min(numbers), listed_last) if numbers else ChunkRange(0, -1)
    for number in range(chunks.first, chunks.last + 1):
        if number not in numbers:
            raise LogGapError(
                f"{store.instance}: chunk {number} is missing from {store.url}: the metadata "
                f"records chunks {chunks}, so it was created and may have held "
                "acknowledged pages"
            )
    outside = [info for info in listed if info.number not in chunks]
    for info in outside:
        if info.number > chunks.last and info.size_bytes:
            raise LogCorruptError(
                _where(store, f"chunk {info.number}"),
                0,
                f"chunk holds {info.size_bytes} bytes but the metadata records chunks "
                f"{chunks}: pages are only written into recorded chunks, so these were "
                "not written by this log",
            )
    instance_id = instance_id_for(store.instance)
    scans: list[tuple[int, ChunkScan]] = []
    for number in range(chunks.first, chunks.last + 1):
        data = await call_with_retry(functools.partial(store.read_chunk, number), policy)
        where = _where(store, f"chunk {number}")
        scan = scan_chunk(data, where=where, instance_id=instance_id, page_bytes_max=page_bytes_max)
        if scan.torn_tail:
            # Only the newest chunk's torn tail is news; older ones are crashes already
            # recovered from, seen again by every start.
            report = logger.warning if number == chunks.last else logger.info
            report("%s: torn write cut off: %s", where, scan.torn_reason)
        scans.append((number, scan))
    check_sequence(scans, first_sequence=0 if chunks.first == 0 and scans else None)
    return ChunkAudit(chunks, recorded, scans, outside, listed_last)


def pages_after(audit: ChunkAudit, checkpoint: CheckpointState) -> list[tuple[int, Page]]:
    """The pages to replay after ``checkpoint``, once it is anchored in the audited log."""
    instance = checkpoint.instance
    number = checkpoint.number
    resume_chunk = checkpoint.resume_chunk
    resume_sequence = checkpoint.resume_sequence
    chunks = audit.chunks
    if audit.scans and not chunks.first <= resume_chunk <= chunks.last + 1:
        raise LogGapError(
            f"{instance}: checkpoint {number} resumes in chunk {resume_chunk}, but the log "
            f"holds chunks {chunks}"
        )
    pages: list[tuple[int, Page]] = []
    for chunk, scan in audit.scans:
        only_after = chunk > resume_chunk or (chunk == resume_chunk == number)
        for page in scan.pages:
            misplaced = None
            if chunk < resume_chunk and page.sequence >= resume_sequence:
                misplaced = f"chunk {chunk} lies before the resume chunk {resume_chunk}"
            elif only_after and page.sequence < resume_sequence:
                misplaced = f"chunk {chunk} holds only pages written after that checkpoint"
            if misplaced is not None:
                raise LogGapError(
                    f"{instance}: page {page.sequence} (chunk {chunk} offset {page.offset}) "
                    f"is out of place for checkpoint {number}, which resumes at page "
                    f"{resume_sequence}: {misplaced}"
                )
            if page.sequence >= resume_sequence:
                pages.append((chunk, page))
    if pages and pages[0][1].sequence != resume_sequence:
        raise LogGapError(
            f"{instance}: checkpoint {number} resumes at page {resume_sequence} but the log "
            f"continues at page {pages[0][1].sequence} (chunk {pages[0][0]})"
        )
    return pages


def _next_chunk(audit: ChunkAudit, checkpoint: CheckpointState) -> int:
    # After the last recorded chunk, and after any leftover beyond it (never reused: a
    # takeover may have fenced it for another writer). Checkpoint N never comes after
    # chunk N - 1 is recorded, so the max with N - 1 only matters for records without
    # a range. Chunk numbers have no holes: a chunk the metadata never recorded is not
    # skipped over, which is what left logs that their own recovery refused.
    return max(audit.chunks.last, audit.listed_last, checkpoint.number - 1) + 1


# Reads of a log whose writer is running: how many times a view that changed under the
# audit is taken again before its finding stands.
_LIVE_READ_ATTEMPTS = 5


async def recover(
    store: LogStore,
    page_bytes_max: int,
    policy: RetryPolicy = DEFAULT_RETRY_POLICY,
    *,
    checkpoint: int | None = None,
) -> LogReading:
    """Audit the log and pick the checkpoint to start from (module docstring).

    ``checkpoint`` names one checkpoint to use (no fallback); None means the latest
    usable one. Raises ``LogError`` when the log cannot be used as it is.
    """
    for attempt in range(_LIVE_READ_ATTEMPTS):
        meta, version = await call_with_retry(store.read_meta, policy)
        try:
            if meta is None or meta.checkpoint is None:
                listed = await call_with_retry(store.list_chunks, policy)
                if any(info.size_bytes for info in listed):
                    raise LogGapError(
                        f"{store.instance}: the log has pages but no metadata record; "
                        "refusing to start over it (restore the metadata or remove the log)"
                    )
                return LogReading(meta, version, None, [], None, [], 0)
            audit = await audit_chunks(store, meta, page_bytes_max, policy)
            break
        except (LogError, NotFoundError):
            # A reader beside a live writer (``ambrosia log``, replay checks) can see the
            # metadata from before a chunk switch or a retention swap and the chunks from
            # after it. Only a view in which the metadata did not move is evidence.
            _, now = await call_with_retry(store.read_meta, policy)
            if now == version or attempt == _LIVE_READ_ATTEMPTS - 1:
                raise
    assert meta is not None and meta.checkpoint is not None
    if checkpoint is not None:
        candidates = [checkpoint]
    else:
        kept = await call_with_retry(store.list_checkpoints, policy)
        older = sorted((number for number in kept if number < meta.checkpoint), reverse=True)
        candidates = [meta.checkpoint, *older]
    skipped: list[tuple[int, LogError]] = []
    for number in candidates:
        try:
            state = await read_checkpoint(store, number, policy)
            pages = pages_after(audit, state)
        except NotFoundError as error:
            skipped.append((number, LogGapError(f"{store.instance}: checkpoint {number}: {error}")))
            continue
        except LogError as error:
            skipped.append((number, error))
            continue
        if skipped:
            _warn_fallback(store, skipped, state)
        return LogReading(meta, version, state, pages, audit, skipped, _next_chunk(audit, state))
    if checkpoint is not None:
        raise skipped[0][1]
    raise _no_usable_checkpoint(skipped)


def _warn_fallback(
    store: LogStore, skipped: list[tuple[int, LogError]], used: CheckpointState
) -> None:
    for number, error in skipped:
        logger.warning("%s: CHECKPOINT %d CANNOT BE USED: %s", store.instance, number, error)
    logger.warning(
        "%s: FALLING BACK from checkpoint %d to the previous kept checkpoint %d: the log "
        "from it passed the audit; replaying from page %d in chunk %d",
        store.instance,
        skipped[0][0],
        used.number,
        used.resume_sequence,
        used.resume_chunk,
    )


def _no_usable_checkpoint(skipped: list[tuple[int, LogError]]) -> LogError:
    _, error = skipped[0]
    if len(skipped) > 1:
        # Keep the latest checkpoint's error type and fields; only the message grows.
        others = "; ".join(f"checkpoint {number}: {other}" for number, other in skipped[1:])
        error.args = (f"{error}; no older kept checkpoint can be used either ({others})",)
    else:
        error.args = (f"{error}; no older kept checkpoint to fall back to",)
    return error


async def read_log(
    store: LogStore,
    checkpoint: CheckpointState,
    page_bytes_max: int,
    policy: RetryPolicy = DEFAULT_RETRY_POLICY,
) -> LogReading:
    """The audited pages after a given ``checkpoint`` (replay and tests)."""
    meta, version = await call_with_retry(store.read_meta, policy)
    if meta is None:
        raise LogGapError(f"{store.instance}: the log has no metadata record")
    audit = await audit_chunks(store, meta, page_bytes_max, policy)
    pages = pages_after(audit, checkpoint)
    return LogReading(meta, version, checkpoint, pages, audit, [], _next_chunk(audit, checkpoint))
