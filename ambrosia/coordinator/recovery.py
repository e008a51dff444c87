"""Reading a log back: the checkpoint to start from and the audited pages after it.

Shared by recovery (the runtime), replay checks (``ambrosia.testing.replay``) and the
``ambrosia log`` inspector, so the rules for what a valid log is exist once.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from ambrosia.backends.base import LogStore
from ambrosia.backends.retry import DEFAULT_RETRY_POLICY, RetryPolicy, call_with_retry
from ambrosia.coordinator.checkpoint import CheckpointState, decode_checkpoint
from ambrosia.errors import LogGapError
from ambrosia.log.page import ChunkScan, Page, check_sequence, instance_id_for, scan_chunk

logger = logging.getLogger("ambrosia.recovery")


@dataclass(frozen=True, slots=True)
class LogReading:
    """Pages to replay after ``checkpoint`` (in order, with their chunk numbers)."""

    checkpoint: CheckpointState
    pages: list[tuple[int, Page]]
    scans: list[tuple[int, ChunkScan]]
    last_chunk: int


async def read_checkpoint(
    store: LogStore, number: int, policy: RetryPolicy = DEFAULT_RETRY_POLICY
) -> CheckpointState:
    where = f"{store.url} {store.instance} checkpoint {number}"
    data = await call_with_retry(lambda: store.read_checkpoint(number), policy)
    return decode_checkpoint(data, where)


async def read_log(
    store: LogStore,
    checkpoint: CheckpointState,
    page_bytes_max: int,
    policy: RetryPolicy = DEFAULT_RETRY_POLICY,
) -> LogReading:
    """Scan and audit every chunk from the checkpoint's resume chunk on.

    Transient storage errors are retried with ``policy``; what is read is never guessed.
    """
    instance_id = instance_id_for(store.instance)
    listed = await call_with_retry(store.list_chunks, policy)
    chunks = [c for c in listed if c.number >= checkpoint.resume_chunk]
    scans: list[tuple[int, ChunkScan]] = []
    for chunk in chunks:
        data = await call_with_retry(functools.partial(store.read_chunk, chunk.number), policy)
        where = f"{store.url} {store.instance} chunk {chunk.number}"
        scan = scan_chunk(data, where=where, instance_id=instance_id, page_bytes_max=page_bytes_max)
        if scan.torn_tail:
            logger.warning("%s: torn write cut off: %s", where, scan.torn_reason)
        scans.append((chunk.number, scan))
    check_sequence(scans, first_sequence=0 if checkpoint.resume_chunk == 0 else None)
    pages = [
        (number, page)
        for number, scan in scans
        for page in scan.pages
        if page.sequence >= checkpoint.resume_sequence
    ]
    if pages and pages[0][1].sequence != checkpoint.resume_sequence:
        raise LogGapError(
            f"{store.instance}: checkpoint {checkpoint.number} resumes at page "
            f"{checkpoint.resume_sequence} but the log continues at page {pages[0][1].sequence}"
        )
    last_chunk = max((c.number for c in chunks), default=-1)
    return LogReading(checkpoint, pages, scans, last_chunk)
