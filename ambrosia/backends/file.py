"""The local-file log store: ``file:///abs/dir`` (local disk, or an Azure Files / NFS mount).

Layout of ``<root>/<instance>/``::

    lock                      the writer lease: an exclusive flock, held for the
                              lease's life ("PID HOST" of the holder written in it)
    holder-E, heartbeat,      the expiring lease instead (``lease_duration_s``,
    write.lock                below)
    epoch                     the lease epoch, incremented on every acquisition
    meta.json                 the metadata record and its version counter
    replicas/<id>.json        standbys' progress notes (``ambrosia.coordinator.replicas``)
    candidates/<name>         a checkpointer standby's candidate checkpoints and status
                              (``ambrosia.coordinator.checkpointer``)
    chunk-00000000.log        chunks: pages appended in place
    checkpoint-00000000.ckpt  checkpoints: complete or absent
    .<name>.tmp-<random>      a file being written; renamed into place when complete

Durability: chunk files are opened with ``O_DSYNC``, so an append returns only once its
bytes are on stable storage (the data-integrity completion of ``fdatasync``, for each
write). Measured here on 8 MiB pages, that is 1.5 to 1.8 times the throughput of
``write`` followed by ``fdatasync``: the kernel writes the page as it goes instead of
dirtying the page cache and flushing it afterwards. New and renamed names are made
durable by an fsync of the directory. Files that must appear whole (checkpoints,
``meta.json``, ``epoch``) are written to a temporary name, fsynced, then renamed over
the final name, so a reader sees the old file or the new one, never a part.

Fencing: the kernel holds the flock for exactly as long as the holder's open file
exists, so a crashed holder (even SIGKILL) releases it and the next acquisition takes
over at once. The epoch file makes every acquisition distinguishable: a ``Lease``
names its epoch, and a mutating call whose lease is not this store's current one
raises ``LeaseLostError``. An append also names the offset it expects to extend;
anything else is ``OffsetMismatchError``, so two writers can never both extend a
chunk. Blocking calls run in a worker thread (one hop per call) so the event loop
keeps running; a lock inside the store serialises the mutating calls' checks and
writes.

A holder that stops (option ``lease_duration_s``)
--------------------------------------------------
A flock never lapses while its holder lives: a primary that is paused (SIGSTOP, a frozen
VM) or hung keeps it forever, and its standbys never take over. With
``lease_duration_s`` set (``--store-option lease_duration_s=2``; every process of the
instance must use it) the lease also expires:

- the holder of epoch E flocks ``holder-E`` (a dead holder is seen at once, as before)
  and rewrites ``heartbeat`` on every renewal (a third of the duration);
- a process that finds ``holder-E`` flocked takes the lease anyway once ``heartbeat``
  has not changed for ``lease_duration_s`` by its own clock (no clock is compared
  across machines);
- every mutation checks that the epoch file is still the one its lease wrote (one
  ``stat``: the file is only ever replaced by rename); chunk creation, checkpoints,
  metadata and retention do it in a cross-process turn (a flock on ``write.lock``), and
  a takeover replaces the epoch file in the same turn. So the stopped holder, resumed,
  finds its epoch gone before its next write and stops (``LeaseLostError``). Appends
  and renewals take no turn (a holder is most likely paused in one of those): an
  append checks before its write and again after it, and a takeover from a live holder
  first moves the chunks it could be writing to new files (a copy, then a rename over
  the old name), so a write made after the takeover lands in a file no reader sees, and
  is never acknowledged; a renewal writes only the heartbeat, which guards nothing.
  A holder paused inside its turn holds a takeover up until it resumes or
  dies, so a turn holds only system calls that do not wait for the disk: the check and
  the rename, create or unlink it guards. Every fsync (of a temporary file before its
  rename, of the directory after) is made outside it, before the call returns. A rename
  whose directory fsync had not happened when a takeover came is made durable by the
  takeover's own (it replaces the epoch file durably before it reads anything).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread
import orjson

from ambrosia.backends import validate_instance_name
from ambrosia.backends.base import ChunkInfo, Lease, Meta, meta_from_record, meta_to_record
from ambrosia.errors import (
    ConfigError,
    LeaseHeldError,
    LeaseLostError,
    LogCorruptError,
    NotFoundError,
    OffsetMismatchError,
    PreconditionFailedError,
    StorageError,
    StorageUnavailableError,
)
from ambrosia.log import checkpoint_name, chunk_name, parse_checkpoint_name, parse_chunk_name

__all__ = ["FileLogStore", "open"]

_T = TypeVar("_T")

_LOCK_FILE = "lock"
_EPOCH_FILE = "epoch"
_META_FILE = "meta.json"
_REPLICAS_DIRECTORY = "replicas"
_CANDIDATES_DIRECTORY = "candidates"
_WRITE_LOCK_FILE = "write.lock"
_HEARTBEAT_FILE = "heartbeat"
_HOLDER_PREFIX = "holder-"
_TEMPORARY_MARK = ".tmp-"
_LEASE_POLL_INTERVAL_S = 0.05

logger = logging.getLogger("ambrosia.backends.file")
_OPEN_CHUNKS_MAX = 4

# Errors that say "try again later" rather than "this went wrong". Descriptor
# exhaustion (EMFILE, ENFILE) is one: descriptors come back as connections close, and a
# full table must not end the process.
_RETRIABLE_ERRNOS = frozenset(
    {
        errno.EAGAIN,
        errno.EINTR,
        errno.ETIMEDOUT,
        errno.EBUSY,
        errno.ECONNRESET,
        errno.EHOSTDOWN,
        errno.EMFILE,
        errno.ENFILE,
    }
)


def _storage_error(error: OSError, what: str) -> StorageError:
    if isinstance(error, FileNotFoundError):
        return NotFoundError(f"{what}: {error}")
    if error.errno in _RETRIABLE_ERRNOS:
        return StorageUnavailableError(f"{what}: {error}")
    return StorageError(f"{what}: {error}")


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as error:
        raise _storage_error(error, what) from error


def _write_all(fd: int, data: bytes | bytearray | memoryview, offset: int | None = None) -> None:
    with memoryview(data) as view:
        written = 0
        while written < len(view):
            if offset is None:
                written += os.write(fd, view[written:])
            else:
                written += os.pwrite(fd, view[written:], offset + written)


def _read_all(fd: int, length: int, offset: int) -> bytes:
    parts: list[bytes] = []
    remaining = length
    while remaining > 0:
        part = os.pread(fd, remaining, offset + length - remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_renamed(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all (a temporary file renamed into place), without
    an fsync: for the advisory objects beside the log (replica notes, candidates)."""
    with _translated(f"write {path}"):
        path.parent.mkdir(exist_ok=True)
        temporary = _temporary_path(path)
        temporary.write_bytes(data)
        os.rename(temporary, path)


def _temporary_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{_TEMPORARY_MARK}{uuid.uuid4().hex}")


def _write_durable_temporary(final: Path, data: bytes) -> Path:
    """Write data to a fresh temporary file next to ``final`` and fsync it."""
    temporary = _temporary_path(final)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    os.close(fd)
    return temporary


@contextlib.contextmanager
def _discarded_on_failure(temporary: Path) -> Iterator[None]:
    """Remove ``temporary`` if the block (that was to rename it into place) fails."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _replace_durably(final: Path, data: bytes) -> None:
    temporary = _write_durable_temporary(final, data)
    with _discarded_on_failure(temporary):
        os.rename(temporary, final)
    _fsync_directory(final.parent)


def _encode_meta(meta: Meta, version: int) -> bytes:
    return orjson.dumps({"version": version, **meta_to_record(meta)})


def _decode_meta(data: bytes, where: str) -> tuple[Meta, int]:
    try:
        record = orjson.loads(data)
        return meta_from_record(record), int(record["version"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise LogCorruptError(where, 0, f"unreadable metadata record: {error}") from error


inline_append_bytes_max = 64 * 1024
"""Appends up to this size may run on the caller's thread instead of a worker thread..."""
inline_sync_s_max = 0.002
"""...as long as recent appends took less than this on average."""


class FileLogStore:
    """The log of one instance in ``<root>/<instance>/``; see the module docstring."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        instance: str,
        *,
        lease_duration_s: float | None = None,
    ) -> None:
        validate_instance_name(instance)
        if lease_duration_s is not None and not lease_duration_s > 0:
            raise ConfigError(f"lease_duration_s {lease_duration_s}: must be positive")
        self._root = Path(root)
        self._instance = instance
        self._directory = self._root / instance
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        # The expiring lease (module docstring, "A holder that stops"): None is flock only.
        self._lease_duration_s = lease_duration_s
        self._write_lock_fd: int | None = None
        self._epoch_inode = 0
        self._heartbeats = 0
        self._observed: tuple[bytes, float] | None = None
        self._lease: Lease | None = None
        self._chunk_fds: dict[int, int] = {}
        self._sync_s_average = 0.0

    # -- identity -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._root.as_uri()

    @property
    def instance(self) -> str:
        return self._instance

    @property
    def directory(self) -> Path:
        return self._directory

    def chunk_path(self, number: int) -> Path:
        return self._directory / chunk_name(number)

    def checkpoint_path(self, number: int) -> Path:
        return self._directory / checkpoint_name(number)

    async def _run(self, function: Callable[..., _T], *args: object) -> _T:
        return await anyio.to_thread.run_sync(function, *args)

    # -- lease --------------------------------------------------------------------------

    async def acquire_lease(self, *, wait_s: float = 0.0) -> Lease:
        deadline = time.monotonic() + max(0.0, wait_s)
        said_so = False
        while True:
            lease = await self._run(self._try_acquire_sync)
            if lease is not None:
                return lease
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                holder = await self._run(self._holder_description_sync)
                raise LeaseHeldError(
                    f"instance {self._instance!r} is held by another live writer ({holder}); "
                    f"waited {wait_s:g} s"
                )
            if not said_so:
                # A wait can be long; whoever started this process should know why at once.
                holder = await self._run(self._holder_description_sync)
                logger.warning(
                    "%s: waiting up to %.0f s for the lease held by %s "
                    "(it is running there; stop it, or wait)",
                    self._instance,
                    remaining_s,
                    holder,
                )
                said_so = True
            await anyio.sleep(min(_LEASE_POLL_INTERVAL_S, remaining_s))

    def _try_acquire_sync(self) -> Lease | None:
        if self._lease_duration_s is not None:
            return self._try_acquire_expiring_sync(self._lease_duration_s)
        with self._lock, _translated(f"acquire the lease of {self._directory}"):
            if self._lock_fd is None:
                fd = os.open(self._directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    return None
                except BaseException:
                    os.close(fd)
                    raise
                self._lock_fd = fd
            try:
                epoch = self._read_epoch_sync() + 1
                _replace_durably(self._directory / _EPOCH_FILE, str(epoch).encode())
                os.ftruncate(self._lock_fd, 0)
                holder = f"{os.getpid()} {socket.gethostname()}\n"
                _write_all(self._lock_fd, holder.encode(), 0)
                self._remove_temporaries_sync()
            except BaseException:
                self._drop_lease_sync()
                raise
            status = os.fstat(self._lock_fd)
            token = f"flock:{status.st_dev}:{status.st_ino}:{os.getpid()}:{epoch}"
            self._lease = Lease(self._instance, epoch, token)
            return self._lease

    # -- the expiring lease ---------------------------------------------------------------

    def _write_lock_sync(self) -> int:
        if self._write_lock_fd is None:
            path = self._directory / _WRITE_LOCK_FILE
            self._write_lock_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        return self._write_lock_fd

    @contextlib.contextmanager
    def _writing_turn(self) -> Iterator[None]:
        """The cross-process turn of check-and-write (called with ``self._lock`` held).

        A process paused inside its turn holds up a takeover until it resumes or dies:
        a turn is a few system calls long, so that is rare, and never unsafe.
        """
        fd = self._write_lock_sync()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _fenced(self, lease: Lease, *, on_disk: bool = True) -> Iterator[None]:
        """Hold ``self._lock`` (and with an expiring lease, the writing turn) and check
        ``lease`` is current, for the mutation inside."""
        with self._lock:
            if self._lease_duration_s is None:
                self._check_lease_sync(lease, on_disk=on_disk)
                yield
                return
            with self._writing_turn():
                self._check_lease_sync(lease, on_disk=True)
                yield

    def _holder_path(self, epoch: int) -> Path:
        return self._directory / f"{_HOLDER_PREFIX}{epoch}"

    def _holder_alive_sync(self, epoch: int) -> bool:
        """Whether the process that took ``epoch`` still runs (it flocks its holder file)."""
        try:
            fd = os.open(self._holder_path(epoch), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # also releases the flock if we got it
        return False

    def _try_acquire_expiring_sync(self, duration_s: float) -> Lease | None:
        with self._lock, _translated(f"acquire the lease of {self._directory}"):
            with self._writing_turn():
                epoch = self._read_epoch_sync()
                if epoch > 0 and self._holder_alive_sync(epoch):
                    heartbeat_path = self._directory / _HEARTBEAT_FILE
                    try:
                        heartbeat = heartbeat_path.read_bytes()
                    except FileNotFoundError:
                        heartbeat = b""
                    now = time.monotonic()
                    if self._observed is None or self._observed[0] != heartbeat:
                        self._observed = (heartbeat, now)
                        return None
                    if now - self._observed[1] < duration_s:
                        return None
                    # Alive but silent for a whole lease (paused, hung): its epoch ends now;
                    # every write it tries next is checked against the epoch in its turn.
                    stealing = True
                else:
                    stealing = False
                self._observed = None
                new_epoch = epoch + 1
                fd = os.open(
                    self._holder_path(new_epoch), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
                )
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    _write_all(fd, f"{os.getpid()}\n".encode(), 0)
                    _replace_durably(self._directory / _EPOCH_FILE, str(new_epoch).encode())
                except BaseException:
                    os.close(fd)
                    raise
                self._lock_fd = fd
                self._epoch_inode = os.stat(self._directory / _EPOCH_FILE).st_ino
                if stealing:
                    self._orphan_chunks_sync()
                self._heartbeats = 0
                self._write_heartbeat_sync(new_epoch)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._holder_path(epoch))
                self._remove_temporaries_sync()
            token = f"expiring:{os.getpid()}:{new_epoch}"
            self._lease = Lease(self._instance, new_epoch, token)
            return self._lease

    def _orphan_chunks_sync(self) -> None:
        """Move the chunks a live old holder may still write into to new files.

        Its descriptors keep pointing at the old files, so a page it writes after this
        lands where no reader looks. Only the chunks from the newest recorded one on
        (it writes nowhere else); each copy costs up to ``checkpoint_log_bytes``.
        """
        meta, _ = self._read_meta_sync()
        first = meta.chunks.last if meta is not None and meta.chunks is not None else 0
        for entry in os.scandir(self._directory):
            number = parse_chunk_name(entry.name)
            if number is None or number < first:
                continue
            final = Path(entry.path)
            temporary = _temporary_path(final)
            with final.open("rb") as source, temporary.open("xb") as copy:
                shutil.copyfileobj(source, copy, 1024 * 1024)
                copy.flush()
                os.fsync(copy.fileno())
            os.rename(temporary, final)
        _fsync_directory(self._directory)

    def _write_heartbeat_sync(self, epoch: int) -> None:
        # Not fsynced: a heartbeat only says "alive"; after a crash nobody is.
        self._heartbeats += 1
        path = self._directory / _HEARTBEAT_FILE
        temporary = _temporary_path(path)
        temporary.write_bytes(f"{epoch} {os.getpid()} {self._heartbeats}".encode())
        os.rename(temporary, path)

    def _holder_description_sync(self) -> str:
        try:
            pid, _, host = (self._directory / _LOCK_FILE).read_text().strip().partition(" ")
        except OSError:
            pid, host = "", ""
        if not pid:
            return "an unknown process"
        return f"process {pid} on host {host}" if host else f"process {pid}"

    def _read_epoch_sync(self) -> int:
        path = self._directory / _EPOCH_FILE
        try:
            text = path.read_text()
        except FileNotFoundError:
            return 0
        try:
            return int(text)
        except ValueError as error:
            raise LogCorruptError(str(path), 0, f"unreadable epoch {text!r}") from error

    def _remove_temporaries_sync(self) -> None:
        # A temporary file left over belongs to a writer that died mid-write; we hold
        # the lease now, so nobody else is writing one.
        for entry in os.scandir(self._directory):
            if entry.name.startswith(".") and _TEMPORARY_MARK in entry.name:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    def _drop_lease_sync(self) -> None:
        for fd in self._chunk_fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._chunk_fds.clear()
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # closing the only fd releases the flock
        self._lock_fd = None
        self._lease = None

    def _check_lease_sync(self, lease: Lease, *, on_disk: bool = True) -> None:
        """Called with self._lock held. ``on_disk`` also re-reads the epoch file."""
        if lease != self._lease or self._lock_fd is None:
            current = None if self._lease is None else self._lease.epoch
            raise LeaseLostError(
                f"lease of {lease.instance!r} at epoch {lease.epoch} is not held by this "
                f"store of {self._instance!r} (its current epoch: {current})"
            )
        if self._lease_duration_s is not None and self._epoch_inode:
            # The epoch file is only ever replaced by rename: the same inode, the same epoch.
            if os.stat(self._directory / _EPOCH_FILE).st_ino == self._epoch_inode:
                return
            on_disk = True
        if on_disk:
            epoch = self._read_epoch_sync()
            if epoch != lease.epoch:
                raise LeaseLostError(
                    f"lease of {self._instance!r} at epoch {lease.epoch} lost: "
                    f"{self._directory / _EPOCH_FILE} says {epoch}"
                )

    async def renew_lease(self, lease: Lease) -> Lease:
        def renew() -> Lease:
            # No turn: a renewal writes only the heartbeat, which says "alive" and guards
            # nothing; one written late, after a takeover, only delays the next one.
            with _translated(f"renew the lease of {self._directory}"), self._lock:
                self._check_lease_sync(lease)
                if self._lease_duration_s is not None:
                    self._write_heartbeat_sync(lease.epoch)
            return lease

        return await self._run(renew)

    async def release_lease(self, lease: Lease) -> None:
        def release() -> None:
            with self._lock:
                if lease == self._lease:
                    self._drop_lease_sync()

        await self._run(release)

    # -- chunks -------------------------------------------------------------------------

    async def list_chunks(self) -> list[ChunkInfo]:
        def list_sync() -> list[ChunkInfo]:
            chunks = []
            with _translated(f"list chunks in {self._directory}"):
                for entry in os.scandir(self._directory):
                    number = parse_chunk_name(entry.name)
                    if number is not None:
                        with contextlib.suppress(FileNotFoundError):
                            chunks.append(ChunkInfo(number, entry.stat().st_size))
            return sorted(chunks, key=lambda chunk: chunk.number)

        return await self._run(list_sync)

    async def create_chunk(self, lease: Lease, number: int) -> None:
        await self._run(self._create_chunk_sync, lease, number)

    def _create_chunk_sync(self, lease: Lease, number: int) -> None:
        path = self.chunk_path(number)
        with _translated(f"create {path}"), self._fenced(lease):
            try:
                # O_DSYNC here too: this descriptor is kept for the chunk's appends.
                flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_DSYNC
                fd = os.open(path, flags, 0o644)
            except FileExistsError:
                size = os.stat(path).st_size
                if size != 0:
                    raise OffsetMismatchError(str(path), 0, size) from None
                # A retry: the first attempt may have died before the directory fsync
                # (made below).
            else:
                self._chunk_fds[number] = fd
                self._close_old_chunks_sync(keep=number)
        # Outside the turn (module docstring, "A holder that stops"), before returning.
        with _translated(f"create {path}"):
            _fsync_directory(self._directory)

    def _close_old_chunks_sync(self, keep: int) -> None:
        for number in sorted(self._chunk_fds)[:-_OPEN_CHUNKS_MAX]:
            if number != keep:
                with contextlib.suppress(OSError):
                    os.close(self._chunk_fds.pop(number))

    def _chunk_fd_sync(self, number: int) -> int:
        fd = self._chunk_fds.get(number)
        if fd is None:
            fd = os.open(self.chunk_path(number), os.O_RDWR | os.O_CLOEXEC | os.O_DSYNC)
            self._chunk_fds[number] = fd
            self._close_old_chunks_sync(keep=number)
        return fd

    async def append(
        self, lease: Lease, chunk: int, *, expected_offset: int, data: bytes | bytearray
    ) -> None:
        if len(data) <= inline_append_bytes_max and self._sync_s_average < inline_sync_s_max:
            # A small page on an idle disk costs one synchronous write (tens of microseconds);
            # handing it to a worker thread and back costs more than that. Large pages,
            # or a disk whose syncs have become slow, go to the thread so the event loop
            # keeps receiving and sending meanwhile.
            self._timed_append(lease, chunk, expected_offset, data)
            return
        await self._run(self._timed_append, lease, chunk, expected_offset, data)

    def append_blocking(
        self, lease: Lease, chunk: int, *, expected_offset: int, data: bytes | bytearray
    ) -> None:
        """``append`` as one blocking call, for a worker thread (``BlockingAppend``)."""
        self._timed_append(lease, chunk, expected_offset, data)

    def _timed_append(
        self, lease: Lease, chunk: int, expected_offset: int, data: bytes | bytearray
    ) -> None:
        started = time.perf_counter()
        self._append_sync(lease, chunk, expected_offset, data)
        # Exponential average over roughly the last eight appends; one slow outlier is
        # capped so that it cannot by itself send the next appends to the thread.
        elapsed = min(time.perf_counter() - started, inline_sync_s_max * 2)
        self._sync_s_average += (elapsed - self._sync_s_average) / 8

    def _append_sync(
        self, lease: Lease, chunk: int, expected_offset: int, data: bytes | bytearray
    ) -> None:
        # The hot path of every page: no context managers and no path built unless an
        # error needs one to name (they were a tenth of a small page's cost).
        try:
            if self._lease_duration_s is None:
                # The flock is ours for as long as our fd lives, so the epoch on disk
                # cannot change under a lease this store holds: no need to re-read it per
                # append.
                with self._lock:
                    self._check_lease_sync(lease, on_disk=False)
                    fd = self._chunk_fd_sync(chunk)
                    if self._appended_already(fd, chunk, expected_offset, data):
                        return
                    self._write_page_sync(fd, chunk, expected_offset, data)
                return
            # An expiring lease (it can be taken from a live holder): no turn at all, so
            # a holder paused in an append (its most likely place) does not hold a
            # takeover up. A takeover that comes between the check and the write moved
            # this chunk's bytes to a new file first (``_orphan_chunks_sync``): the write
            # goes to the old one or is in the copy, and the check after it fails, so it
            # is never acknowledged.
            with self._lock:
                self._check_lease_sync(lease)
                fd = self._chunk_fd_sync(chunk)
                if self._appended_already(fd, chunk, expected_offset, data):
                    return
            self._write_page_sync(fd, chunk, expected_offset, data)
            self._check_lease_sync(lease)
        except OSError as error:
            raise _storage_error(error, f"append to {self.chunk_path(chunk)}") from error

    def _appended_already(
        self, fd: int, chunk: int, expected_offset: int, data: bytes | bytearray
    ) -> bool:
        """True if this exact append already landed (a retry); raises if the chunk ends
        anywhere else than ``expected_offset``."""
        size = os.fstat(fd).st_size
        if size == expected_offset:
            return False
        landed = size == expected_offset + len(data) and len(data) > 0
        if landed and _read_all(fd, len(data), expected_offset) == data:
            return True  # a retry of an append that did land
        raise OffsetMismatchError(str(self.chunk_path(chunk)), expected_offset, size)

    def _write_page_sync(
        self, fd: int, chunk: int, expected_offset: int, data: bytes | bytearray
    ) -> None:
        try:
            _write_all(fd, data, expected_offset)  # O_DSYNC: durable on return
        except BaseException:
            # Leave no partial page behind, and never trust this fd again: after a
            # failed fsync the kernel may have dropped the dirty pages.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, expected_offset)
            if self._chunk_fds.get(chunk) == fd:
                with contextlib.suppress(OSError):
                    os.close(self._chunk_fds.pop(chunk))
            raise

    async def read_chunk(self, chunk: int, *, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"offset {offset} and length {length} must not be negative")
        return await self._run(self._read_sync, self.chunk_path(chunk), offset, length)

    @staticmethod
    def _read_sync(path: Path, offset: int, length: int | None) -> bytes:
        with _translated(f"read {path}"):
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                size = os.fstat(fd).st_size
                wanted = max(0, size - offset) if length is None else length
                return _read_all(fd, wanted, offset)
            finally:
                os.close(fd)

    # -- checkpoints --------------------------------------------------------------------

    async def write_checkpoint(self, lease: Lease, number: int, data: bytes) -> None:
        await self._run(self._write_checkpoint_sync, lease, number, data)

    def _write_checkpoint_sync(self, lease: Lease, number: int, data: bytes) -> None:
        final = self.checkpoint_path(number)
        with _translated(f"write {final}"):
            with self._fenced(lease):
                pass
            # The long write happens outside the lock so appends go on meanwhile.
            temporary = _write_durable_temporary(final, data)
            try:
                with self._fenced(lease):
                    if final.exists():
                        if final.read_bytes() != data:
                            raise PreconditionFailedError(
                                f"{final} exists with other content; checkpoints are immutable"
                            )
                        return
                    os.rename(temporary, final)
                _fsync_directory(self._directory)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)

    async def read_checkpoint(self, number: int) -> bytes:
        return await self._run(self._read_sync, self.checkpoint_path(number), 0, None)

    async def list_checkpoints(self) -> list[int]:
        def list_sync() -> list[int]:
            with _translated(f"list checkpoints in {self._directory}"):
                names = os.listdir(self._directory)
            numbers = (parse_checkpoint_name(name) for name in names)
            return sorted(number for number in numbers if number is not None)

        return await self._run(list_sync)

    # -- metadata -----------------------------------------------------------------------

    def _read_meta_sync(self) -> tuple[Meta | None, int | None]:
        path = self._directory / _META_FILE
        with _translated(f"read {path}"):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return None, None
        return _decode_meta(data, str(path))

    async def read_meta(self) -> tuple[Meta | None, str | None]:
        meta, version = await self._run(self._read_meta_sync)
        return meta, None if version is None else str(version)

    async def swap_meta(self, lease: Lease, *, expected: str | None, new: Meta) -> str:
        return await self._run(self._swap_meta_sync, lease, expected, new)

    def _swap_meta_sync(self, lease: Lease, expected: str | None, new: Meta) -> str:
        path = self._directory / _META_FILE
        # The version this swap writes follows from the one it expects (checked in the
        # turn), so the record is written and synced before the turn, and the turn holds
        # only the check and the rename (module docstring, "A holder that stops").
        new_version = int(expected) + 1 if expected is not None and expected.isdecimal() else 1
        with _translated(f"replace {path}"):
            temporary = _write_durable_temporary(path, _encode_meta(new, new_version))
            with _discarded_on_failure(temporary), self._fenced(lease):
                _, version = self._read_meta_sync()
                current = None if version is None else str(version)
                if current != expected:
                    raise PreconditionFailedError(
                        f"metadata of {self._instance!r} is at version {current}, "
                        f"expected {expected}"
                    )
                os.rename(temporary, path)
            _fsync_directory(self._directory)
        return str(new_version)

    # -- retention and shutdown ---------------------------------------------------------

    async def delete_before(
        self, lease: Lease, number: int, *, checkpoints_before: int | None = None
    ) -> None:
        checkpoint_limit = number if checkpoints_before is None else checkpoints_before
        await self._run(self._delete_before_sync, lease, number, checkpoint_limit)

    def _delete_before_sync(self, lease: Lease, number: int, checkpoint_limit: int) -> None:
        with (
            _translated(f"delete old chunks and checkpoints in {self._directory}"),
            self._fenced(lease),
        ):
            for name in os.listdir(self._directory):
                chunk = parse_chunk_name(name)
                checkpoint = parse_checkpoint_name(name)
                if chunk is not None and chunk < number:
                    fd = self._chunk_fds.pop(chunk, None)
                    if fd is not None:
                        os.close(fd)
                elif checkpoint is None or checkpoint >= checkpoint_limit:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._directory / name)
        with _translated(f"delete old chunks and checkpoints in {self._directory}"):
            _fsync_directory(self._directory)

    # -- replica board (``ambrosia.coordinator.replicas``) ---------------------------------

    def _replica_path(self, replica_id: str) -> Path:
        if not replica_id or "/" in replica_id or replica_id.startswith("."):
            raise ValueError(f"replica id {replica_id!r} is not a plain name")
        return self._directory / _REPLICAS_DIRECTORY / f"{replica_id}.json"

    async def write_replica_note(self, replica_id: str, data: bytes) -> None:
        path = self._replica_path(replica_id)

        # Advisory and rewritten every second: atomic (rename), not fsynced.
        await self._run(_write_renamed, path, data)

    async def list_replica_notes(self) -> list[tuple[str, bytes]]:
        directory = self._directory / _REPLICAS_DIRECTORY

        def listing() -> list[tuple[str, bytes]]:
            notes = []
            with _translated(f"list {directory}"):
                try:
                    entries = list(os.scandir(directory))
                except FileNotFoundError:
                    return []
                for entry in entries:
                    if entry.name.endswith(".json") and not entry.name.startswith("."):
                        with contextlib.suppress(FileNotFoundError):
                            notes.append(
                                (entry.name[: -len(".json")], Path(entry.path).read_bytes())
                            )
            return sorted(notes)

        return await self._run(listing)

    async def remove_replica_note(self, replica_id: str) -> None:
        path = self._replica_path(replica_id)

        def remove() -> None:
            with _translated(f"remove {path}"), contextlib.suppress(FileNotFoundError):
                os.unlink(path)

        await self._run(remove)

    # -- candidate area (``ambrosia.coordinator.checkpointer``) ----------------------------

    def _candidate_path(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"candidate name {name!r} is not a plain name")
        return self._directory / _CANDIDATES_DIRECTORY / name

    async def write_candidate(self, name: str, data: bytes) -> None:
        path = self._candidate_path(name)

        # Whole or absent (a temporary file renamed into place), not fsynced: a candidate
        # is read once, verified, and made durable by the primary's copy; one lost with
        # its machine is a candidate that never came.
        await self._run(_write_renamed, path, data)

    async def read_candidate(self, name: str) -> bytes:
        path = self._candidate_path(name)

        def read() -> bytes:
            with _translated(f"read {path}"):
                return path.read_bytes()

        return await self._run(read)

    async def remove_candidate(self, name: str) -> None:
        path = self._candidate_path(name)

        def remove() -> None:
            with _translated(f"remove {path}"), contextlib.suppress(FileNotFoundError):
                os.unlink(path)

        await self._run(remove)

    async def close(self) -> None:
        def close_sync() -> None:
            with self._lock:
                self._drop_lease_sync()
                if self._write_lock_fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(self._write_lock_fd)
                    self._write_lock_fd = None

        await self._run(close_sync)


def _prepare_directory_sync(directory: Path) -> None:
    missing = []
    path = directory
    while not path.exists():
        missing.append(path)
        path = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        _fsync_directory(created.parent)
    if not directory.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(directory))


def check_url(url: urllib.parse.SplitResult) -> Path:
    """The directory of a well-formed ``file:///abs/dir``; ConfigError otherwise (no IO)."""
    shown = url.geturl()
    if url.netloc not in ("", "localhost"):
        # file://data/log reads as host "data", path /log: a relative path, mistyped.
        raise ConfigError(
            f"file log store URL {shown!r} must be file:///absolute/dir: {url.netloc!r} "
            f"reads as a host name; for a path write file:///{url.netloc}{url.path} "
            "(absolute, three slashes)"
        )
    if url.query or url.fragment:
        raise ConfigError(
            f"file log store URL {shown!r} must be file:///absolute/dir (no query or fragment)"
        )
    root = Path(urllib.parse.unquote(url.path))
    if not root.is_absolute() or url.path in ("", "/"):
        raise ConfigError(f"file log store URL {shown!r} needs an absolute directory")
    return root


async def open(url: urllib.parse.SplitResult, instance: str, **options: object) -> FileLogStore:
    """Open ``file:///abs/dir`` for ``instance`` (the backend contract of ambrosia.backends)."""
    lease_duration_s = options.pop("lease_duration_s", None)
    if options:
        raise ConfigError(
            f"file log store takes no options but lease_duration_s, got {sorted(options)}"
        )
    if lease_duration_s is not None:
        try:
            lease_duration_s = float(lease_duration_s)  # type: ignore[arg-type]
        except (TypeError, ValueError) as error:
            raise ConfigError(f"lease_duration_s {lease_duration_s!r}: not a number") from error
    store = FileLogStore(check_url(url), instance, lease_duration_s=lease_duration_s)
    try:
        await anyio.to_thread.run_sync(_prepare_directory_sync, store.directory)
    except OSError as error:
        raise ConfigError(f"cannot use {store.directory} as a log directory: {error}") from error
    return store
