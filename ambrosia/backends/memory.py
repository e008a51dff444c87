"""The in-memory log store: ``memory://name``, for tests.

A process-wide registry maps (name, instance) to one shared state, so two store
objects opened with the same URL and instance see the same log, just as two processes
would see the same directory. The fencing rules are the file store's: one lease holder
at a time, an epoch that rises with every acquisition, a stale lease rejected with
``LeaseLostError``, an append at any offset but the end rejected with
``OffsetMismatchError``. A holder never dies here (there is no process to kill): the
lease is free again only when released or when its store is closed. Every call yields
to the event loop once, before it acts, so concurrent callers interleave as they would
on a real store, and each call's effect is atomic.
"""

from __future__ import annotations

import itertools
import time
import urllib.parse
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel

from ambrosia.backends import validate_instance_name
from ambrosia.backends.base import ChunkInfo, Lease, Meta
from ambrosia.errors import (
    ConfigError,
    LeaseHeldError,
    LeaseLostError,
    NotFoundError,
    OffsetMismatchError,
    PreconditionFailedError,
)

__all__ = ["MemoryLogStore", "forget", "open"]

_LEASE_POLL_INTERVAL_S = 0.01


@dataclass(slots=True)
class _State:
    chunks: dict[int, bytearray] = field(default_factory=dict)
    checkpoints: dict[int, bytes] = field(default_factory=dict)
    meta: Meta | None = None
    meta_version: int = 0
    epoch: int = 0
    holder: Lease | None = None


_REGISTRY: dict[tuple[str, str], _State] = {}
_STORE_IDS = itertools.count(1)


def forget(name: str) -> None:
    """Drop every instance's state kept under ``memory://name``."""
    for key in [key for key in _REGISTRY if key[0] == name]:
        del _REGISTRY[key]


class MemoryLogStore:
    """One instance's log in process memory; see the module docstring."""

    def __init__(self, name: str, instance: str) -> None:
        validate_instance_name(instance)
        self._name = name
        self._instance = instance
        self._state = _REGISTRY.setdefault((name, instance), _State())
        self._store_id = next(_STORE_IDS)

    @property
    def url(self) -> str:
        return f"memory://{self._name}"

    @property
    def instance(self) -> str:
        return self._instance

    def _check_lease(self, lease: Lease) -> None:
        if lease != self._state.holder:
            raise LeaseLostError(
                f"lease of {lease.instance!r} at epoch {lease.epoch} is not current "
                f"(current epoch of {self._instance!r}: {self._state.epoch})"
            )

    def _where(self, chunk: int) -> str:
        return f"{self.url}/{self._instance}/chunk {chunk}"

    def _chunk(self, chunk: int) -> bytearray:
        data = self._state.chunks.get(chunk)
        if data is None:
            raise NotFoundError(f"{self._where(chunk)} does not exist")
        return data

    # -- lease --------------------------------------------------------------------------

    async def acquire_lease(self, *, wait_s: float = 0.0) -> Lease:
        deadline = time.monotonic() + max(0.0, wait_s)
        while True:
            await anyio.lowlevel.checkpoint()
            state = self._state
            holder = state.holder
            if holder is None or holder.token.startswith(f"memory:{self._store_id}:"):
                state.epoch += 1
                state.holder = Lease(
                    self._instance, state.epoch, f"memory:{self._store_id}:{state.epoch}"
                )
                return state.holder
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise LeaseHeldError(
                    f"instance {self._instance!r} in {self.url} is held at epoch {holder.epoch}; "
                    f"waited {wait_s:g} s"
                )
            await anyio.sleep(min(_LEASE_POLL_INTERVAL_S, remaining_s))

    async def renew_lease(self, lease: Lease) -> Lease:
        await anyio.lowlevel.checkpoint()
        self._check_lease(lease)
        return lease

    async def release_lease(self, lease: Lease) -> None:
        await anyio.lowlevel.checkpoint()
        if lease == self._state.holder:
            self._state.holder = None

    # -- chunks -------------------------------------------------------------------------

    async def list_chunks(self) -> list[ChunkInfo]:
        await anyio.lowlevel.checkpoint()
        chunks = self._state.chunks
        return [ChunkInfo(number, len(chunks[number])) for number in sorted(chunks)]

    async def create_chunk(self, lease: Lease, number: int) -> None:
        await anyio.lowlevel.checkpoint()
        self._check_lease(lease)
        existing = self._state.chunks.get(number)
        if existing is None:
            self._state.chunks[number] = bytearray()
        elif existing:
            raise OffsetMismatchError(self._where(number), 0, len(existing))

    async def append(
        self, lease: Lease, chunk: int, *, expected_offset: int, data: bytes | bytearray
    ) -> None:
        await anyio.lowlevel.checkpoint()
        self._check_lease(lease)
        stored = self._chunk(chunk)
        if len(stored) != expected_offset:
            end = expected_offset + len(data)
            if data and len(stored) == end and stored[expected_offset:end] == data:
                return  # a retry of an append that did land
            raise OffsetMismatchError(self._where(chunk), expected_offset, len(stored))
        stored += data

    async def read_chunk(self, chunk: int, *, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"offset {offset} and length {length} must not be negative")
        await anyio.lowlevel.checkpoint()
        stored = self._chunk(chunk)
        end = len(stored) if length is None else offset + length
        return bytes(stored[offset:end])

    # -- checkpoints --------------------------------------------------------------------

    async def write_checkpoint(self, lease: Lease, number: int, data: bytes) -> None:
        await anyio.lowlevel.checkpoint()
        self._check_lease(lease)
        existing = self._state.checkpoints.get(number)
        if existing is not None and existing != data:
            raise PreconditionFailedError(
                f"checkpoint {number} of {self._instance!r} exists with other content"
            )
        self._state.checkpoints[number] = bytes(data)

    async def read_checkpoint(self, number: int) -> bytes:
        await anyio.lowlevel.checkpoint()
        data = self._state.checkpoints.get(number)
        if data is None:
            raise NotFoundError(f"checkpoint {number} of {self._instance!r} does not exist")
        return data

    async def list_checkpoints(self) -> list[int]:
        await anyio.lowlevel.checkpoint()
        return sorted(self._state.checkpoints)

    # -- metadata -----------------------------------------------------------------------

    async def read_meta(self) -> tuple[Meta | None, str | None]:
        await anyio.lowlevel.checkpoint()
        state = self._state
        return state.meta, None if state.meta is None else str(state.meta_version)

    async def swap_meta(self, lease: Lease, *, expected: str | None, new: Meta) -> str:
        await anyio.lowlevel.checkpoint()
        self._check_lease(lease)
        state = self._state
        current = None if state.meta is None else str(state.meta_version)
        if current != expected:
            raise PreconditionFailedError(
                f"metadata of {self._instance!r} is at version {current}, expected {expected}"
            )
        state.meta = new
        state.meta_version += 1
        return str(state.meta_version)

    # -- retention and shutdown ---------------------------------------------------------

    async def delete_before(
        self, lease: Lease, number: int, *, checkpoints_before: int | None = None
    ) -> None:
        await anyio.lowlevel.checkpoint()
        self._check_lease(lease)
        state = self._state
        for chunk in [chunk for chunk in state.chunks if chunk < number]:
            del state.chunks[chunk]
        limit = number if checkpoints_before is None else checkpoints_before
        for checkpoint in [checkpoint for checkpoint in state.checkpoints if checkpoint < limit]:
            del state.checkpoints[checkpoint]

    async def close(self) -> None:
        holder = self._state.holder
        if holder is not None and holder.token.startswith(f"memory:{self._store_id}:"):
            self._state.holder = None


def check_url(url: urllib.parse.SplitResult) -> str:
    """The store name of a well-formed ``memory://name``; ConfigError otherwise."""
    if not url.netloc or url.path not in ("", "/") or url.query or url.fragment:
        raise ConfigError(f"memory log store URL {url.geturl()!r} must be memory://name")
    return url.netloc


async def open(url: urllib.parse.SplitResult, instance: str, **options: object) -> MemoryLogStore:
    """Open ``memory://name`` for ``instance`` (the backend contract of ambrosia.backends)."""
    if options:
        raise ConfigError(f"memory log store takes no options, got {sorted(options)}")
    return MemoryLogStore(check_url(url), instance)
