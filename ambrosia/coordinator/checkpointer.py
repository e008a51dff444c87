"""Checkpoints taken by a standby and adopted by the primary (``--checkpointer``).

A primary takes a checkpoint by serializing its application at a quiescent page
boundary, which holds up its calls for as long as that takes. A hot standby already has
the same state, replayed from the log, so it can take the checkpoint instead
(``ambrosia run NAME --role standby --checkpointer``, or ``checkpointer = true`` in the
deployment file's ``[coordinator]`` table):

1. When its current chunk is full (``checkpoint_log_bytes``) the primary, instead of
   serializing anything, only switches to chunk N (``Committer.switch_chunk``) if a
   checkpointer is alive (below), and waits for checkpoint N from it.
2. The checkpointer replays the log. At the first quiescent page boundary inside chunk
   N, it serializes its replayed state as checkpoint N (resuming in chunk N, at the page
   after that boundary), writes it whole into the log store's candidate area
   (``CandidateArea``: ``candidates/`` beside the log, no lease needed, so a stale or
   fenced standby can never touch the log, its checkpoints or its metadata), then
   announces it in its status object (``candidates/status``: ``CheckpointerStatus``).
3. The primary reads the status (one small read every ``Config.checkpointer_check_s``
   while a checkpointer is announced, backing off to one every ``ABSENT_CHECK_S_MAX``
   while none is, plus one before each checkpoint due while none is known, and every
   standby poll interval while it waits for a candidate),
   reads the announced candidate and verifies it (``verify_candidate``): its length
   and checksum (the checkpoint's own xxh64) as announced, the instance, the number
   N, that it resumes in chunk N at a page chunk N holds or the next one. Then it
   writes it as checkpoint N under its lease, points the metadata at it and retires
   chunks and checkpoints per retention, exactly as for a checkpoint of its own. The
   log store keeps one writer: only the lease holder writes checkpoints and the
   metadata.

The primary checkpoints itself, and says why in its log ("checkpointing itself: ..."),
when the checkpointer's status is missing, has not changed for
``Config.checkpointer_silent_s`` (its process died), when it was more than
``Config.checkpointer_lag_pages_max`` pages behind at the last status, when candidate N
did not come before chunk N held ``Config.checkpointer_wait_bytes`` (the bound in bytes;
by default one chunk, ``checkpoint_log_bytes``), or when a candidate was refused
("checkpoint candidate N refused: ..."), also when the checkpointer runs another version
of the code. After three refusals in a row it stops delegating to that checkpointer
until another one announces itself.

A candidate is invisible until complete on every store (file: a temporary file renamed,
not fsynced, since the primary's copy is the durable one; s3: one PUT; azblob: one
block blob upload), and it is checked against its announcement
anyway, so a checkpointer killed while writing leaves at most a candidate that is refused
or never announced; the primary goes on from the checkpoint it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import orjson

from ambrosia.backends.retry import call_with_retry
from ambrosia.errors import AmbrosiaError, LogCorruptError, NotFoundError
from ambrosia.log.page import Page
from ambrosia.protocol.checkpoint import CheckpointState, decode_checkpoint, encode_checkpoint

if TYPE_CHECKING:
    from ambrosia.coordinator.standby import StandbyRuntime

__all__ = [
    "STATUS_NAME",
    "Adopter",
    "CandidateArea",
    "CandidateRefusedError",
    "CandidateWriter",
    "CheckpointerStatus",
    "area_of",
    "candidate_name",
    "decode_status",
    "verify_candidate",
]

logger = logging.getLogger("ambrosia.coordinator")

# A primary that finds no checkpointer status reads it again after 2, 4, ... up to this
# many times ``checkpointer_check_s``' worth of seconds, then every this many seconds,
# and once more before each checkpoint it is about to take (``refresh_if_stale``): a
# checkpointer started later takes the next checkpoint, and an instance without one
# costs about 3 reads a minute plus one per checkpoint.
ABSENT_CHECK_S_MAX = 20.0

STATUS_NAME = "status"
# Status objects are small; anything larger is not one.
STATUS_BYTES_MAX = 4096
# Testing knob: make the checkpointer write bad candidates (``checksum``: one byte
# flipped; ``page``: a resume page beyond the log; ``torn``: half the bytes announced as
# whole, then the process SIGKILLs itself, as if killed in the middle of the write).
FAULT_ENVIRONMENT_VARIABLE = "AMBROSIA_CHECKPOINTER_FAULT"
_FAULTS = ("checksum", "page", "torn")
_REFUSALS_MAX = 3


def candidate_name(number: int) -> str:
    return f"checkpoint-{number:010d}"


@runtime_checkable
class CandidateArea(Protocol):
    """Objects beside the log that anyone may write, without the lease."""

    async def write_candidate(self, name: str, data: bytes) -> None:
        """Write ``name`` whole (readers see the old object or the new one, or none)."""
        ...

    async def read_candidate(self, name: str) -> bytes:
        """The object ``name``; NotFoundError when there is none."""
        ...

    async def remove_candidate(self, name: str) -> None: ...


def area_of(store: object) -> CandidateArea | None:
    """The store's candidate area, looking through wrappers (fault injection)."""
    seen = 0
    while store is not None and seen < 4:
        if isinstance(store, CandidateArea):
            return store
        store = getattr(store, "inner", None)
        seen += 1
    return None


@dataclass(frozen=True, slots=True)
class CheckpointerStatus:
    """What a checkpointer says of itself, and the candidate it wrote last."""

    replica_id: str
    pid: int
    host: str
    replayed_sequence: int
    updated: float
    candidate: int | None = None
    candidate_resume_sequence: int = -1
    candidate_bytes: int = 0
    candidate_xxh64: int = 0
    # The version of the code it runs (``ambrosia.upgrade``): only a primary of the same
    # version adopts its candidates. None: not declared.
    version: int | None = None

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))


def decode_status(data: bytes) -> CheckpointerStatus | None:
    """The status in ``data``, or None if it is not one (torn or foreign)."""
    if len(data) > STATUS_BYTES_MAX:
        return None
    try:
        record: dict[str, Any] = orjson.loads(data)
        candidate = record.get("candidate")
        version = record.get("version")
        return CheckpointerStatus(
            replica_id=str(record["replica_id"]),
            pid=int(record["pid"]),
            host=str(record["host"]),
            replayed_sequence=int(record["replayed_sequence"]),
            updated=float(record["updated"]),
            candidate=None if candidate is None else int(candidate),
            candidate_resume_sequence=int(record.get("candidate_resume_sequence", -1)),
            candidate_bytes=int(record.get("candidate_bytes", 0)),
            candidate_xxh64=int(record.get("candidate_xxh64", 0)),
            version=None if version is None else int(version),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


class CandidateRefusedError(AmbrosiaError):
    """A candidate checkpoint that must not be adopted; the message says why."""


def _trailer(data: bytes) -> int:
    return int.from_bytes(data[-8:], "little") if len(data) >= 8 else -1


def verify_candidate(
    data: bytes,
    *,
    instance: str,
    number: int,
    first_sequence: int,
    next_sequence: int,
    announced: CheckpointerStatus,
    where: str,
) -> CheckpointState:
    """Checkpoint ``number`` decoded from ``data``, or CandidateRefusedError saying why.

    ``first_sequence``: the first page of chunk ``number``; ``next_sequence``: the page
    the primary writes next (a candidate cannot resume after it).
    """
    if len(data) != announced.candidate_bytes:
        raise CandidateRefusedError(
            f"{len(data)} bytes where the checkpointer announced {announced.candidate_bytes} "
            "(a partial or replaced write)"
        )
    if _trailer(data) != announced.candidate_xxh64:
        raise CandidateRefusedError(
            f"checksum {_trailer(data):#018x} where the checkpointer announced "
            f"{announced.candidate_xxh64:#018x}"
        )
    try:
        state = decode_checkpoint(data, where)
    except LogCorruptError as error:
        raise CandidateRefusedError(f"unreadable: {error}") from error
    except (KeyError, TypeError, ValueError) as error:
        raise CandidateRefusedError(f"malformed header: {error!r}") from error
    if state.instance != instance:
        raise CandidateRefusedError(f"it is a checkpoint of {state.instance!r}, not {instance!r}")
    if state.number != number:
        raise CandidateRefusedError(f"it is numbered {state.number}, not {number}")
    if state.resume_chunk != number:
        raise CandidateRefusedError(f"it resumes in chunk {state.resume_chunk}, not {number}")
    if state.resume_sequence != announced.candidate_resume_sequence:
        raise CandidateRefusedError(
            f"it resumes at page {state.resume_sequence}, the checkpointer announced "
            f"{announced.candidate_resume_sequence}"
        )
    if not first_sequence <= state.resume_sequence <= next_sequence:
        raise CandidateRefusedError(
            f"it resumes at page {state.resume_sequence}, outside chunk {number} (its first "
            f"page is {first_sequence}, the next page written is {next_sequence})"
        )
    return state


# -- the standby's side ------------------------------------------------------------------


class CandidateWriter:
    """A checkpointer standby's candidates and status (module docstring, step 2)."""

    def __init__(self, runtime: StandbyRuntime, area: CandidateArea) -> None:
        self.runtime = runtime
        self.area = area
        self.written = 0
        self.last_number = -1
        self.epoch = 0
        self.status = CheckpointerStatus(
            replica_id=runtime.replica_id,
            pid=os.getpid(),
            host=socket.gethostname(),
            replayed_sequence=-1,
            updated=0.0,
        )
        self._status_at = 0.0
        self._known_checkpoint = -1
        self._meta_chunk = -1
        fault = os.environ.get(FAULT_ENVIRONMENT_VARIABLE, "").strip()
        if fault and fault not in _FAULTS:
            raise ValueError(f"{FAULT_ENVIRONMENT_VARIABLE}={fault!r}: expected one of {_FAULTS}")
        self.fault = fault or None

    def _wants(self, chunk: int) -> bool:
        """Whether checkpoint ``chunk`` is still to be written (by someone)."""
        loaded = self.runtime._loaded_checkpoint
        done = max(
            self.last_number, self._known_checkpoint, -1 if loaded is None else loaded.number
        )
        return chunk >= 1 and chunk > done

    async def replay(self, pages: list[tuple[int, Page]]) -> None:
        """Replay ``pages`` (``StandbyRuntime._replay_new``), stopping at the first quiescent
        boundary inside a chunk that still wants its checkpoint, to write it there."""
        runtime = self.runtime
        if pages:
            self.epoch = max(self.epoch, pages[-1][1].epoch)
        start = 0
        for index, (chunk, _) in enumerate(pages):
            if not self._wants(chunk):
                continue
            if index > start:
                await runtime._replay_new(pages[start:index])
                start = index
            await self._try(chunk)
        await runtime._replay_new(pages[start:])
        tail = runtime.tail
        if (
            tail is not None
            and tail.next_sequence == runtime.delivered_sequence + 1
            and self._wants(tail.chunk)
        ):
            # Caught up, at the start (or inside) the chunk the tail reads.
            await self._try(tail.chunk)
        await self.write_status()

    async def _try(self, chunk: int) -> None:
        runtime = self.runtime
        binding = runtime.binding
        if binding is None or not binding.quiescent:
            return
        if self._meta_chunk != chunk:
            # Once per chunk: did the primary take this checkpoint itself?
            self._meta_chunk = chunk
            meta, _ = await call_with_retry(runtime.store.read_meta, runtime.config.retry_policy)
            if meta is not None:
                self.epoch = max(self.epoch, meta.epoch)
            if meta is not None and meta.checkpoint is not None:
                self._known_checkpoint = meta.checkpoint
                if not self._wants(chunk):
                    return
        taken = await binding.take_checkpoint()
        if taken is None:
            return
        resume_sequence = runtime.delivered_sequence + 1
        if self.fault == "page":
            resume_sequence += 1_000_000
        started = time.perf_counter()
        state = runtime._snapshot(
            taken,
            number=chunk,
            resume_sequence=resume_sequence,
            resume_chunk=chunk,
            epoch=self.epoch,
        )
        data = encode_checkpoint(state)
        announced = data
        if self.fault == "checksum":
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
            announced = data
        elif self.fault == "torn":
            data = data[: len(data) // 2]
        try:
            await call_with_retry(
                lambda: self.area.write_candidate(candidate_name(chunk), data),
                runtime.config.retry_policy,
            )
        except AmbrosiaError as error:
            logger.warning(
                "%s: candidate checkpoint %d not written: %s", runtime.instance, chunk, error
            )
            return
        previous = self.last_number
        self.last_number = chunk
        self.written += 1
        self.status = replace(
            self.status,
            candidate=chunk,
            candidate_resume_sequence=resume_sequence,
            candidate_bytes=len(announced),
            candidate_xxh64=_trailer(announced),
        )
        await self.write_status(force=True)
        logger.info(
            "%s: candidate checkpoint %d written (resumes at page %d, %d bytes, %.1f ms)",
            runtime.instance,
            chunk,
            resume_sequence,
            len(data),
            (time.perf_counter() - started) * 1000,
        )
        if self.fault == "torn":
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)
        if previous >= 0:
            with contextlib.suppress(AmbrosiaError):
                await self.area.remove_candidate(candidate_name(previous))

    async def write_status(self, *, force: bool = False) -> None:
        """Rewrite the status (at most every ``board_interval_s`` unless ``force``)."""
        runtime = self.runtime
        now = time.monotonic()
        if not force and now - self._status_at < runtime.settings.board_interval_s:
            return
        self._status_at = now
        self.status = replace(
            self.status,
            replayed_sequence=runtime.delivered_sequence,
            updated=time.time(),
            version=runtime.code_version,
        )
        try:
            await self.area.write_candidate(STATUS_NAME, self.status.encode())
        except AmbrosiaError as error:
            logger.debug("%s: checkpointer status not written: %s", runtime.instance, error)

    async def withdraw(self) -> None:
        """No longer a checkpointer (stopping, or primary now): remove the status."""
        with contextlib.suppress(AmbrosiaError):
            data = await self.area.read_candidate(STATUS_NAME)
            status = decode_status(data)
            if status is None or status.replica_id == self.status.replica_id:
                await self.area.remove_candidate(STATUS_NAME)


# -- the primary's side ------------------------------------------------------------------


class Adopter:
    """The primary's view of the checkpointer, and the adoption of its candidates."""

    def __init__(self, runtime: StandbyRuntime, area: CandidateArea) -> None:
        self.runtime = runtime
        self.area = area
        self.status: CheckpointerStatus | None = None
        self.seen_any = False
        self._updated = -1.0
        self._changed_at = 0.0
        self._read_at = -1e9
        self.adopted = 0
        self.taken_itself = 0
        self.refusals = 0
        self._refused_replica: str | None = None
        self.force_reason: str | None = None
        self.waiting = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        interval = self.runtime.config.checkpointer_check_s
        if interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._refresh_loop(interval))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None

    async def _refresh_loop(self, interval_s: float) -> None:
        # With no checkpointer the reads back off, doubling up to ABSENT_CHECK_S_MAX: on a
        # cloud store each read is a billed request, and most instances run none.
        pause_s = interval_s
        while True:
            await self.refresh()
            if self.status is None:
                pause_s = min(pause_s * 2, max(interval_s, ABSENT_CHECK_S_MAX))
            else:
                pause_s = interval_s
            await asyncio.sleep(pause_s)

    async def refresh_if_stale(self) -> None:
        """Before a checkpoint while no checkpointer is known: read the status once more
        unless it was read within ``checkpointer_check_s``, so that a checkpointer started
        during the reads' back-off takes the very next checkpoint, not one up to
        ``ABSENT_CHECK_S_MAX`` later."""
        interval = self.runtime.config.checkpointer_check_s
        if self.status is None and interval > 0 and time.monotonic() - self._read_at >= interval:
            await self.refresh()

    async def refresh(self) -> None:
        self._read_at = time.monotonic()
        try:
            data = await self.area.read_candidate(STATUS_NAME)
        except NotFoundError:
            self.status = None
            return
        except AmbrosiaError as error:
            logger.debug("%s: checkpointer status not read: %s", self.runtime.instance, error)
            return
        status = decode_status(data)
        if status is None or status.replica_id == self.runtime.replica_id:
            self.status = None  # its own, from when it was a standby
            return
        if status.updated != self._updated or self.status is None:
            self._updated = status.updated
            self._changed_at = time.monotonic()
        if self._refused_replica is not None and status.replica_id != self._refused_replica:
            self._refused_replica = None
            self.refusals = 0
        self.status = status
        self.seen_any = True

    def delegate_reason(self) -> str | None:
        """None when the next checkpoint goes to the checkpointer, else why not."""
        if self.force_reason is not None:
            return self.force_reason
        config = self.runtime.config
        if config.checkpointer_check_s <= 0:
            return "checkpointer_check_s is 0"
        status = self.status
        if status is None:
            return "no checkpointer has announced itself"
        silent = time.monotonic() - self._changed_at
        if silent > config.checkpointer_silent_s:
            return (
                f"checkpointer {status.replica_id} has been silent for {silent:.1f} s "
                f"(more than {config.checkpointer_silent_s} s)"
            )
        if status.version != self.runtime.code_version:
            return (
                f"checkpointer {status.replica_id} runs version {status.version}, this "
                f"process version {self.runtime.code_version}"
            )
        behind = self.runtime.delivered_sequence - status.replayed_sequence
        if behind > config.checkpointer_lag_pages_max:
            return (
                f"checkpointer {status.replica_id} is {behind} pages behind (more than "
                f"{config.checkpointer_lag_pages_max})"
            )
        if self._refused_replica == status.replica_id and self.refusals >= _REFUSALS_MAX:
            return f"the last {self.refusals} candidates of {status.replica_id} were refused"
        return None

    def checkpointing_itself(self, reason: str) -> None:
        """The primary takes this checkpoint itself; say why when a checkpointer exists."""
        self.taken_itself += 1
        self.force_reason = None
        if self.seen_any or self.runtime.config.checkpointer:
            logger.warning("%s: checkpointing itself: %s", self.runtime.instance, reason)

    async def adopt(self, number: int, first_sequence: int) -> None:
        """Wait for candidate ``number`` and adopt it (the runtime's checkpoint task)."""
        runtime = self.runtime
        # A status read per standby poll while waiting, at most 20 a second.
        poll_s = max(runtime.settings.poll_interval_s, 0.05)
        self.waiting = True
        try:
            while True:
                await self.refresh()
                status = self.status
                if status is not None and status.candidate == number:
                    self.waiting = False
                    await self._adopt(number, first_sequence, status)
                    return
                committer = runtime.committer
                reason = self.delegate_reason()
                wait_bytes = (
                    runtime.config.checkpointer_wait_bytes or runtime.config.checkpoint_log_bytes
                )
                if (
                    reason is None
                    and committer is not None
                    and committer.chunk == number
                    and committer.chunk_offset >= wait_bytes
                ):
                    reason = (
                        f"candidate {number} did not come before chunk {number} was full "
                        f"({committer.chunk_offset} bytes)"
                    )
                if reason is not None:
                    self._fall_back(reason)
                    return
                await asyncio.sleep(poll_s)
        finally:
            self.waiting = False

    def _fall_back(self, reason: str) -> None:
        self.force_reason = reason
        self.runtime.request_checkpoint()

    async def _adopt(self, number: int, first_sequence: int, status: CheckpointerStatus) -> None:
        runtime = self.runtime
        policy = runtime.config.retry_policy
        started = time.perf_counter()
        name = candidate_name(number)
        where = f"{runtime.store.url} {runtime.instance} candidate {name}"
        try:
            data = await call_with_retry(lambda: self.area.read_candidate(name), policy)
            committer = runtime.committer
            assert committer is not None
            await asyncio.to_thread(
                verify_candidate,
                data,
                instance=runtime.instance,
                number=number,
                first_sequence=first_sequence,
                next_sequence=committer.next_sequence,
                announced=status,
                where=where,
            )
        except (CandidateRefusedError, NotFoundError) as error:
            self.refusals = self.refusals + 1 if self._refused_replica == status.replica_id else 1
            self._refused_replica = status.replica_id
            logger.warning(
                "%s: checkpoint candidate %d of %s refused: %s",
                runtime.instance,
                number,
                status.replica_id,
                error,
            )
            self._fall_back(f"candidate {number} was refused")
            return
        await runtime._adopt_checkpoint(number, data, status.replica_id, started)
        self.adopted += 1
        self.refusals = 0
        with contextlib.suppress(AmbrosiaError):
            await self.area.remove_candidate(name)
