"""Power loss for tests: storage that forgets, at a crash, whatever was not made durable.

A SIGKILL never discards what the operating system has cached, so a test that kills
real processes cannot notice a missing ``O_DSYNC`` or ``fsync``: the bytes survive in
the page cache and the next process reads them. Real power loss cannot be produced on
a test machine either. So this module simulates it, and it is the one simulation in the
crash tests: everything else (the stores, the runtimes, TCP) is the real thing.

The file store: ``PowerLossDisk``
---------------------------------
The real ``FileLogStore`` runs on it, so its own sync discipline is what is tested.
``PowerLossDisk.installed()`` swaps the ``os`` module that ``ambrosia.backends.file``
uses for a shim. Operations on files inside a tracked directory (one per instance)
still happen on the real files (every read, including those made through ``pathlib``,
sees what a live process would see: the page cache), and the shim keeps, beside
them, what stable storage holds:

- per file, its durable content; per directory, its durable names (name -> file);
- a write through a descriptor opened with ``O_DSYNC`` is durable when it returns;
  any other write, and every ``ftruncate``, is cached until ``fsync``/``fdatasync`` of
  that file, which makes the file's whole current content durable;
- a create, rename or unlink is cached until ``fsync`` of the directory, which makes
  the directory's whole current name table durable (the contents of the files it names
  stay what they are: durable or not).

At a crash (``crash``, or the armed Kth mutating operation of a directory) what
survives is decided with a seeded ``random.Random``, within what a real disk may do:

- per file, the cached writes reach the disk in order up to a random point, and the
  first one after that point may be torn (a random prefix of its bytes lands);
- per directory, the cached name operations reach the disk in order up to a random
  point (a journalling file system commits them in order; "none of them" is one of the
  outcomes, and the one a strict reading of POSIX gives);
- the operation during which the crash happens does not complete: a write may leave a
  random prefix (durable if ``O_DSYNC``, cached otherwise), anything else has no effect.

The real directory is then rewritten to exactly what survived, and every descriptor the
crashed writer held is made dead: its number stays reserved (it now points at
``/dev/null``, so the number cannot be reused under a dying thread that still closes
it), its open file is closed (so its ``flock`` lease dies with it, as with a dead
process), and every later operation on it or in its directory raises
``SimulatedCrash`` until the directory is revived (``revive``) for the next life.
Descriptors stay real and usable for everything the shim does not model (``fcntl``,
``fstat``), and the real files are opened without ``O_DSYNC`` (the shim keeps the
durability) so the simulation runs at page-cache speed.

Not modelled: directories other than the tracked ones (created before the first life and
taken as durable), data written through ``pathlib`` (the file store writes only through
``os``), and reordering of writes within one file (they land in order, the last torn).

Any other store: ``PowerLossStore``
-----------------------------------
A ``LogStore`` wrapper for the memory store and the cloud stores, whose calls are
durable once they return (a completed PUT or append-block is on the service). Every
mutating call is in flight from the moment it is made until the wrapped call starts;
at a crash each call still in flight is either applied or dropped (seeded), the call
during which the crash happens included, and every later call raises
``SimulatedCrash``. A call already inside the wrapped store completes or is cancelled
with its task, both of which a service may do. Then the crashed writer's lease is let
go (``expire_lease``, by default the store's ``close``): a dead process's lease
expires, and the memory store's never would.

A cloud store's lease outlives its crashed holder until its term runs out (60 s by
default on S3, 15 to 60 s on Azure). ``expire_cloud_lease`` skips that wait: it puts the
lease where its expiry would, without touching anything else the dead writer left (its
chunks, their leases or fences, its metadata), so the next writer's takeover does all
of its work. On S3 the lock record keeps its holder and epoch and gets an expiry time
that has passed (what the clock would do); on Azure the lock blob's lease is broken
with a zero break period (a broken lease, like an expired one, is acquirable with any
new id; the chunks' and metadata's infinite leases stay the dead writer's). Call it
once every task of the dead writer has ended: a store left running could still renew.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os as _os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.lowlevel

from ambrosia.backends.base import ChunkInfo, Lease, LogStore, Meta

if TYPE_CHECKING:
    from ambrosia.backends.file import FileLogStore

__all__ = ["PowerLossDisk", "PowerLossStore", "SimulatedCrash", "expire_cloud_lease"]

_T = TypeVar("_T")


class SimulatedCrash(BaseException):
    """Raised by every storage operation of a writer whose power was cut.

    A BaseException, so the product's ``except Exception`` and ``except AmbrosiaError``
    handlers do not mistake it for a storage failure they could retry or report.
    """


@dataclass(slots=True)
class _File:
    """One file (an inode): what stable storage holds, and the writes since its last sync."""

    durable: bytearray
    # ("write", offset, data) or ("truncate", length, b""), in the order they were made.
    cached: list[tuple[str, int, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class _Descriptor:
    directory: _Directory
    file: _File | None  # None: the directory itself (opened to fsync it)
    dsync: bool


@dataclass(slots=True)
class _Directory:
    path: Path
    live: dict[str, _File]  # what a live process sees (mirrors the real directory)
    durable_names: dict[str, _File]
    # ("create", name, file), ("rename", source, destination) or ("unlink", name, None),
    # in the order they were made.
    cached_names: list[tuple[str, str, str | _File | None]] = field(default_factory=list)
    descriptors: set[int] = field(default_factory=set)
    dead: set[int] = field(default_factory=set)  # reserved numbers of a crashed writer
    crashed: bool = False
    operations: int = 0  # mutating operations since the last arm
    crash_at: int | None = None
    on_crash: Callable[[], None] | None = None
    life: int = 0  # raised at every crash: work of an older life must not touch the new one


def _apply(content: bytearray, kind: str, position: int, data: bytes) -> None:
    if kind == "truncate":
        del content[position:]
        content.extend(bytes(max(0, position - len(content))))
        return
    end = position + len(data)
    if len(content) < position:
        content.extend(bytes(position - len(content)))
    content[position:end] = data


class PowerLossDisk:
    """The simulated disk under ``FileLogStore`` (see the module docstring)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._lock = threading.RLock()
        self._directories: dict[Path, _Directory] = {}
        self._descriptors: dict[int, _Descriptor] = {}
        self._null_fd: int | None = None
        self._untracked: set[int] = set()  # opened through the shim outside tracked dirs
        # The life (directory, number) whose store call this thread is running, if any.
        self._thread = threading.local()
        self.crashes = 0
        self.shim = _OsShim(self)

    # -- set-up ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def installed(self) -> Iterator[PowerLossDisk]:
        """Route the file store's ``os`` calls through this disk for the block's duration."""
        from ambrosia.backends import file as file_module

        # The module's own global, so every call it makes (in any thread) goes through us.
        namespace = vars(file_module)
        previous = namespace["os"]
        namespace["os"] = self.shim
        self._null_fd = _os.open(_os.devnull, _os.O_RDWR | _os.O_CLOEXEC)
        try:
            yield self
        finally:
            namespace["os"] = previous
            for directory in list(self._directories.values()):
                self._close_dead(directory)
            _os.close(self._null_fd)
            self._null_fd = None

    def bind(self, store: FileLogStore) -> None:
        """Tie ``store``'s worker-thread calls to the current life of its directory.

        A crashed process runs nothing more; here its store calls may still be queued for
        or running in a worker thread when its tasks have ended (a cancelled task does
        not wait for its thread). Marked with their life, they fail once a newer life
        has begun instead of writing into it. The store has no hook for this, so its
        ``_run`` (the one hop to a worker thread) and ``append_blocking`` (what the
        committer's writer thread calls) are wrapped on this instance.
        """
        with self._lock:
            state = self._directories[Path(store.directory)]
            life = state.life
        hop = store._run
        local = self._thread

        async def run(function: Callable[..., _T], *args: object) -> _T:
            def marked() -> _T:
                local.life = (state, life)
                try:
                    return function(*args)
                finally:
                    local.life = None

            return await hop(marked)

        blocking = store.append_blocking

        def append_blocking(
            lease: Any, chunk: int, *, expected_offset: int, data: bytes | bytearray
        ) -> None:
            # Large pages are appended by the committer's own writer thread, not ``_run``.
            local.life = (state, life)
            try:
                blocking(lease, chunk, expected_offset=expected_offset, data=data)
            finally:
                local.life = None

        vars(store)["_run"] = run
        vars(store)["append_blocking"] = append_blocking

    def track(self, directory: Path) -> None:
        """Model ``directory`` from now on; what it holds now is taken as durable."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = {
            entry.name: _File(bytearray(Path(entry.path).read_bytes()))
            for entry in _os.scandir(directory)
            if entry.is_file()
        }
        with self._lock:
            self._directories[directory] = _Directory(directory, dict(files), dict(files))

    def arm(self, directory: Path, after_operations: int, on_crash: Callable[[], None]) -> None:
        """Crash ``directory`` during its ``after_operations``-th mutating operation from now."""
        with self._lock:
            state = self._directories[Path(directory)]
            state.operations = 0
            state.crash_at = after_operations
            state.on_crash = on_crash

    def disarm(self, directory: Path) -> None:
        with self._lock:
            state = self._directories[Path(directory)]
            state.crash_at = None
            state.on_crash = None

    def operations(self, directory: Path) -> int:
        """Mutating operations in ``directory`` since it was last armed (or tracked)."""
        with self._lock:
            return self._directories[Path(directory)].operations

    def crash(self, directory: Path) -> None:
        """Cut the power of ``directory``'s writer now (between two of its operations)."""
        with self._lock:
            state = self._directories[Path(directory)]
            if not state.crashed:
                self._power_loss(state, None)

    def crashed(self, directory: Path) -> bool:
        """Whether ``directory``'s writer has lost its power and not been revived."""
        with self._lock:
            state = self._directories.get(Path(directory))
            return state is not None and state.crashed

    def revive(self, directory: Path) -> None:
        """Let a new life use ``directory`` (after the crashed one has been torn down)."""
        with self._lock:
            state = self._directories[Path(directory)]
            self._close_dead(state)
            state.crashed = False

    def forget(self, root: Path) -> None:
        """Stop modelling every directory under ``root`` (a finished simulation)."""
        with self._lock:
            for path in [path for path in self._directories if path.is_relative_to(root)]:
                state = self._directories.pop(path)
                self._close_dead(state)
                for fd in state.descriptors:
                    self._descriptors.pop(fd, None)

    def _close_dead(self, state: _Directory) -> None:
        for fd in state.dead:
            with contextlib.suppress(OSError):
                _os.close(fd)
        state.dead.clear()

    # -- the crash ----------------------------------------------------------------------------

    def _power_loss(
        self, state: _Directory, interrupted: tuple[_Descriptor, int, bytes] | None
    ) -> None:
        """Decide what survived, rewrite the real directory to it, kill the descriptors."""
        rng = self.rng
        self.crashes += 1
        state.crashed = True
        state.life += 1
        state.crash_at = None
        if interrupted is not None:
            descriptor, position, data = interrupted
            assert descriptor.file is not None
            torn = data[: rng.randint(0, len(data))]
            if descriptor.dsync:
                _apply(descriptor.file.durable, "write", position, torn)
            else:
                descriptor.file.cached.append(("write", position, torn))
        names = dict(state.durable_names)
        landed_names = state.cached_names[: rng.randint(0, len(state.cached_names))]
        for kind, name, operand in landed_names:
            if kind == "create":
                assert isinstance(operand, _File)
                names[name] = operand
            elif kind == "unlink":
                names.pop(name, None)
            elif name in names:
                assert isinstance(operand, str)
                names[operand] = names.pop(name)
        for file in {id(file): file for file in names.values()}.values():
            landed = rng.randint(0, len(file.cached))
            for kind, position, data in file.cached[:landed]:
                _apply(file.durable, kind, position, data)
            if landed < len(file.cached):
                kind, position, data = file.cached[landed]
                if kind == "write" and data:
                    _apply(file.durable, kind, position, data[: rng.randint(0, len(data) - 1)])
            file.cached.clear()
        for fd in state.descriptors:
            # Keep the number, drop the open file (and with it the flock lease).
            assert self._null_fd is not None
            _os.dup2(self._null_fd, fd)
            self._descriptors.pop(fd, None)
            state.dead.add(fd)
        state.descriptors.clear()
        for entry in _os.scandir(state.path):
            if entry.is_file() or entry.is_symlink():
                _os.unlink(entry.path)
        survivors: dict[str, _File] = {}
        for name, file in names.items():
            real = _os.open(state.path / name, _os.O_WRONLY | _os.O_CREAT | _os.O_TRUNC, 0o644)
            try:
                _os.write(real, file.durable)
            finally:
                _os.close(real)
            # A hard link is not modelled: every surviving name is its own file now.
            survivors[name] = _File(bytearray(file.durable))
        state.live = survivors
        state.durable_names = dict(survivors)
        state.cached_names.clear()
        on_crash, state.on_crash = state.on_crash, None
        if on_crash is not None:
            on_crash()

    # -- what the shim calls ----------------------------------------------------------------

    def _directory_of(self, path: Any) -> tuple[_Directory, str] | None:
        resolved = Path(_os.fspath(path))
        state = self._directories.get(resolved)
        if state is not None:
            return state, ""
        state = self._directories.get(resolved.parent)
        return None if state is None else (state, resolved.name)

    def _alive(self, state: _Directory) -> None:
        if state.crashed:
            raise SimulatedCrash(f"{state.path}: the power of its writer was cut")
        mark = getattr(self._thread, "life", None)
        if mark is not None and mark[0] is state and mark[1] != state.life:
            raise SimulatedCrash(f"{state.path}: a call of life {mark[1]} after its crash")

    def _count(self, state: _Directory, interrupted: tuple[_Descriptor, int, bytes] | None) -> None:
        """One mutating operation: the armed one crashes instead of completing."""
        self._alive(state)
        state.operations += 1
        if state.crash_at is not None and state.operations >= state.crash_at:
            self._power_loss(state, interrupted)
            raise SimulatedCrash(f"{state.path}: power cut during operation {state.operations}")

    def _descriptor(self, fd: int) -> _Descriptor | None:
        descriptor = self._descriptors.get(fd)
        if descriptor is not None:
            self._alive(descriptor.directory)
            return descriptor
        for state in self._directories.values():
            if fd in state.dead:
                raise SimulatedCrash(f"descriptor {fd} of {state.path} died with its writer")
        return None

    def open(self, path: Any, flags: int, mode: int = 0o777) -> int:
        with self._lock:
            found = self._directory_of(path)
            if found is None:
                untracked = _os.open(path, flags, mode)
                self._untracked.add(untracked)
                return untracked
            state, name = found
            self._alive(state)
            creates = bool(flags & _os.O_CREAT) and name != "" and name not in state.live
            if creates or flags & _os.O_TRUNC:
                self._count(state, None)
            fd = _os.open(path, flags & ~_os.O_DSYNC, mode)
            file = None
            if name:
                if creates:
                    file = _File(bytearray())
                    state.live[name] = file
                    state.cached_names.append(("create", name, file))
                else:
                    file = state.live[name]
                if flags & _os.O_TRUNC:
                    file.cached.append(("truncate", 0, b""))
            self._descriptors[fd] = _Descriptor(state, file, bool(flags & _os.O_DSYNC))
            state.descriptors.add(fd)
            return fd

    def close(self, fd: int) -> None:
        with self._lock:
            marked = getattr(self._thread, "life", None)
            if marked is not None and marked[1] != marked[0].life:
                # A crashed life's worker thread: its numbers are reserved (dead) until
                # ``revive`` releases them, after which they may be another life's.
                return
            descriptor = self._descriptors.pop(fd, None)
            if descriptor is not None:
                descriptor.directory.descriptors.discard(fd)
            elif fd in self._untracked:
                self._untracked.discard(fd)
            else:
                dead = [state for state in self._directories.values() if fd in state.dead]
                if not dead:
                    # A late close from a crashed life, of a number already released
                    # (``revive``/``forget``) and perhaps reused by another thread since
                    # (a directory listing, a new life's file): closing it would close
                    # theirs. A dead process closes nothing; neither does this.
                    return
                for state in dead:
                    state.dead.discard(fd)
            _os.close(fd)

    def write(self, fd: int, data: Any, position: int | None = None) -> int:
        with self._lock:
            descriptor = self._descriptor(fd)
            if descriptor is None or descriptor.file is None:
                if position is None:
                    return _os.write(fd, data)
                return _os.pwrite(fd, data, position)
            at = _os.lseek(fd, 0, _os.SEEK_CUR) if position is None else position
            payload = bytes(data)
            self._count(descriptor.directory, (descriptor, at, payload))
            written = _os.write(fd, payload) if position is None else _os.pwrite(fd, payload, at)
            payload = payload[:written]
            if descriptor.dsync:
                _apply(descriptor.file.durable, "write", at, payload)
            else:
                descriptor.file.cached.append(("write", at, payload))
            return written

    def ftruncate(self, fd: int, length: int) -> None:
        with self._lock:
            descriptor = self._descriptor(fd)
            if descriptor is not None and descriptor.file is not None:
                self._count(descriptor.directory, None)
                descriptor.file.cached.append(("truncate", length, b""))
            _os.ftruncate(fd, length)

    def fsync(self, fd: int) -> None:
        with self._lock:
            descriptor = self._descriptor(fd)
            if descriptor is None:
                _os.fsync(fd)
                return
            state = descriptor.directory
            self._count(state, None)
            if descriptor.file is None:
                state.durable_names = dict(state.live)
                state.cached_names.clear()
                return
            file = descriptor.file
            for kind, position, data in file.cached:
                _apply(file.durable, kind, position, data)
            file.cached.clear()

    def rename(self, source: Any, destination: Any) -> None:
        with self._lock:
            found = self._directory_of(source)
            if found is None:
                _os.rename(source, destination)
                return
            state, name = found
            target = self._directory_of(destination)
            if target is None or target[0] is not state:
                raise AssertionError(f"rename of {source} out of its directory is not modelled")
            self._count(state, None)
            _os.rename(source, destination)
            state.live[target[1]] = state.live.pop(name)
            state.cached_names.append(("rename", name, target[1]))

    def unlink(self, path: Any) -> None:
        with self._lock:
            found = self._directory_of(path)
            if found is None:
                _os.unlink(path)
                return
            state, name = found
            self._count(state, None)
            _os.unlink(path)  # FileNotFoundError here, as from the real call
            del state.live[name]
            state.cached_names.append(("unlink", name, None))

    def checked(self, fd: int) -> None:
        """Raise SimulatedCrash for a descriptor of a crashed writer (reads through it)."""
        with self._lock:
            self._descriptor(fd)

    def checked_directory(self, path: Any) -> None:
        """Raise SimulatedCrash for a listing of a crashed writer's directory."""
        with self._lock:
            state = self._directories.get(Path(_os.fspath(path)))
            if state is not None:
                self._alive(state)


class _OsShim(ModuleType):
    """What ``ambrosia.backends.file`` sees as ``os``: the disk's model for what it
    changes, the real module for everything else."""

    def __init__(self, disk: PowerLossDisk) -> None:
        super().__init__("os")
        self._disk = disk

    def __getattr__(self, name: str) -> Any:
        return getattr(_os, name)

    def open(self, path: Any, flags: int, mode: int = 0o777) -> int:
        return self._disk.open(path, flags, mode)

    def close(self, fd: int) -> None:
        self._disk.close(fd)

    def write(self, fd: int, data: Any) -> int:
        return self._disk.write(fd, data)

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        return self._disk.write(fd, data, offset)

    def ftruncate(self, fd: int, length: int) -> None:
        self._disk.ftruncate(fd, length)

    def fsync(self, fd: int) -> None:
        self._disk.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self._disk.fsync(fd)

    def rename(self, source: Any, destination: Any) -> None:
        self._disk.rename(source, destination)

    def replace(self, source: Any, destination: Any) -> None:
        self._disk.rename(source, destination)

    def unlink(self, path: Any) -> None:
        self._disk.unlink(path)

    def remove(self, path: Any) -> None:
        self._disk.unlink(path)

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        self._disk.checked(fd)
        return _os.pread(fd, length, offset)

    def fstat(self, fd: int) -> _os.stat_result:
        self._disk.checked(fd)
        return _os.fstat(fd)

    def scandir(self, path: Any) -> Any:
        self._disk.checked_directory(path)
        return _os.scandir(path)

    def listdir(self, path: Any) -> list[str]:
        self._disk.checked_directory(path)
        return _os.listdir(path)


# -- any LogStore ---------------------------------------------------------------------------


@dataclass(slots=True)
class _InFlight:
    name: str
    call: Callable[[], Awaitable[Any]]
    started: bool = False


class PowerLossStore:
    """A ``LogStore`` whose writer can lose its power (see the module docstring)."""

    def __init__(
        self,
        inner: LogStore,
        rng: random.Random,
        *,
        expire_lease: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.inner = inner
        self.rng = rng
        self._expire_lease = expire_lease or inner.close
        self._in_flight: list[_InFlight] = []
        self._ids = itertools.count()
        self.crashed = False
        self.operations = 0
        self._crash_at: int | None = None
        self._on_crash: Callable[[], None] | None = None
        self.applied_at_crash: list[str] = []
        self.dropped_at_crash: list[str] = []

    @property
    def url(self) -> str:
        return self.inner.url

    @property
    def instance(self) -> str:
        return self.inner.instance

    def arm(self, after_operations: int, on_crash: Callable[[], None]) -> None:
        """Crash during the ``after_operations``-th mutating call from now."""
        self.operations = 0
        self._crash_at = after_operations
        self._on_crash = on_crash

    def disarm(self) -> None:
        self._crash_at = None
        self._on_crash = None

    async def crash(self) -> None:
        """Cut the power now: settle the calls in flight, let the lease expire."""
        if self.crashed:
            return
        self.crashed = True
        self._crash_at = None
        for call in list(self._in_flight):
            if call.started:
                continue  # inside the service: its task completes or cancels it
            if self.rng.random() < 0.5:
                self.applied_at_crash.append(call.name)
                with contextlib.suppress(Exception):
                    await call.call()
            else:
                self.dropped_at_crash.append(call.name)
        with contextlib.suppress(Exception):
            await self._expire_lease()
        on_crash, self._on_crash = self._on_crash, None
        if on_crash is not None:
            on_crash()

    def _alive(self) -> None:
        if self.crashed:
            raise SimulatedCrash(f"{self.url} {self.instance}: the power of its writer was cut")

    async def _mutate(self, name: str, call: Callable[[], Awaitable[Any]]) -> Any:
        self._alive()
        entry = _InFlight(name, call)
        self._in_flight.append(entry)
        try:
            self.operations += 1
            if self._crash_at is not None and self.operations >= self._crash_at:
                await self.crash()
                raise SimulatedCrash(f"{self.instance}: power cut during {name}")
            # In flight: a crash of this writer meanwhile decides whether it lands.
            await anyio.lowlevel.checkpoint()
            self._alive()
            entry.started = True
            return await call()
        finally:
            self._in_flight.remove(entry)

    async def _read(self, call: Callable[[], Awaitable[Any]]) -> Any:
        self._alive()
        return await call()

    # -- LogStore --------------------------------------------------------------------------

    async def acquire_lease(self, *, wait_s: float = 0.0) -> Lease:
        lease: Lease = await self._mutate(
            "acquire_lease", lambda: self.inner.acquire_lease(wait_s=wait_s)
        )
        return lease

    async def renew_lease(self, lease: Lease) -> Lease:
        renewed: Lease = await self._read(lambda: self.inner.renew_lease(lease))
        return renewed

    async def release_lease(self, lease: Lease) -> None:
        await self._mutate("release_lease", lambda: self.inner.release_lease(lease))

    async def list_chunks(self) -> list[ChunkInfo]:
        chunks: list[ChunkInfo] = await self._read(self.inner.list_chunks)
        return chunks

    async def create_chunk(self, lease: Lease, number: int) -> None:
        await self._mutate(f"create_chunk {number}", lambda: self.inner.create_chunk(lease, number))

    async def append(
        self, lease: Lease, chunk: int, *, expected_offset: int, data: bytes | bytearray
    ) -> None:
        copy = bytes(data)  # the caller may reuse its buffer once a dropped call returned
        await self._mutate(
            f"append chunk {chunk} at {expected_offset}",
            lambda: self.inner.append(lease, chunk, expected_offset=expected_offset, data=copy),
        )

    async def read_chunk(self, chunk: int, *, offset: int = 0, length: int | None = None) -> bytes:
        data: bytes = await self._read(
            lambda: self.inner.read_chunk(chunk, offset=offset, length=length)
        )
        return data

    async def write_checkpoint(self, lease: Lease, number: int, data: bytes) -> None:
        await self._mutate(
            f"write_checkpoint {number}", lambda: self.inner.write_checkpoint(lease, number, data)
        )

    async def read_checkpoint(self, number: int) -> bytes:
        data: bytes = await self._read(lambda: self.inner.read_checkpoint(number))
        return data

    async def list_checkpoints(self) -> list[int]:
        numbers: list[int] = await self._read(self.inner.list_checkpoints)
        return numbers

    async def read_meta(self) -> tuple[Meta | None, str | None]:
        meta: tuple[Meta | None, str | None] = await self._read(self.inner.read_meta)
        return meta

    async def swap_meta(self, lease: Lease, *, expected: str | None, new: Meta) -> str:
        version: str = await self._mutate(
            "swap_meta", lambda: self.inner.swap_meta(lease, expected=expected, new=new)
        )
        return version

    async def delete_before(
        self, lease: Lease, number: int, *, checkpoints_before: int | None = None
    ) -> None:
        await self._mutate(
            f"delete_before {number}",
            lambda: self.inner.delete_before(lease, number, checkpoints_before=checkpoints_before),
        )

    async def close(self) -> None:
        if not self.crashed:
            await self.inner.close()


async def expire_cloud_lease(store: LogStore) -> None:
    """What the running out of the writer lease of ``store`` leaves (S3 or Azure Blob);
    see the module docstring. ``store`` is the crashed writer's own (unwrapped) store.

    Reaches into the store's lock handling: the stores have no such operation (a lease
    expires on its own), and this is a test's shortcut through the waiting.
    """
    module = type(store).__module__
    if module == "ambrosia.backends.s3":
        from ambrosia.backends.s3 import S3LogStore
        from ambrosia.errors import NotFoundError, PreconditionFailedError

        assert isinstance(store, S3LogStore)
        while True:
            record, etag = await store._read_lock()
            if record is None or record.expires_at_s <= time.time():
                return
            expired = dataclasses.replace(record, expires_at_s=time.time())
            try:
                await store._put_lock(expired, if_match=etag)
                return
            except (PreconditionFailedError, NotFoundError):
                continue  # it moved meanwhile (a request of the dead writer landing late)
    if module == "ambrosia.backends.azblob":
        from azure.core.exceptions import HttpResponseError
        from azure.storage.blob.aio import BlobLeaseClient

        from ambrosia.backends.azblob import AzureBlobLogStore

        assert isinstance(store, AzureBlobLogStore)
        try:
            await BlobLeaseClient(store._blob("lock")).break_lease(lease_break_period=0)
        except HttpResponseError as error:
            if error.status_code not in (404, 409):  # no lock blob yet, or no lease on it
                raise
        return
    raise TypeError(f"no cloud lease to expire on a {type(store).__name__}")
