"""A log store wrapper that injects the failures cloud storage really has, for tests.

``FaultInjectingStore(inner, seed=..., rates=...)`` forwards every call to ``inner``
but, decided by a seeded ``random.Random`` so a failing run can be replayed:

- timeout: the call raises ``StorageUnavailableError`` before reaching the store
  (the request never arrived);
- unavailable: the same, worded as a 503 from the service;
- throttled: the same, worded as throttling (429 / SlowDown);
- ambiguous write: for the operations in ``ambiguous_operations`` the call DOES reach the
  store and succeeds, then the caller gets ``StorageUnavailableError`` anyway (a timeout
  after the write landed). This is the failure that duplicates pages when a store or a
  caller retries blindly: the retry must find the bytes already there and succeed
  without writing them twice (or raise ``OffsetMismatchError`` and let the caller read
  back).

All injected errors are retriable, so ``ambrosia.backends.retry`` retries them; a test
checks that exactly-once holds and that retries stay within the policy's bounds.
``counts`` records what was injected. Lease operations get only the pre-call faults by
default: an ambiguous lease acquisition would leave a lease nobody knows it holds, which
is real but only costs one lease duration, and would make tests slow rather than
interesting.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from ambrosia.backends.base import ChunkInfo, Lease, LogStore, Meta
from ambrosia.errors import StorageUnavailableError

__all__ = ["FaultCounts", "FaultInjectingStore", "FaultRates"]

_Result = TypeVar("_Result")

DEFAULT_AMBIGUOUS_OPERATIONS = frozenset({"append", "create_chunk", "write_checkpoint"})


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Probability of each fault per call; their sum must stay at or below 1."""

    timeout: float = 0.0
    unavailable: float = 0.0
    throttled: float = 0.0
    ambiguous_write: float = 0.0

    def __post_init__(self) -> None:
        rates = (self.timeout, self.unavailable, self.throttled, self.ambiguous_write)
        if any(rate < 0 for rate in rates) or sum(rates) > 1:
            raise ValueError(f"fault rates must be >= 0 and sum to at most 1: {self}")


@dataclass(slots=True)
class FaultCounts:
    calls: int = 0
    timeouts: int = 0
    unavailable: int = 0
    throttled: int = 0
    ambiguous_writes: int = 0

    @property
    def injected(self) -> int:
        return self.timeouts + self.unavailable + self.throttled + self.ambiguous_writes


class FaultInjectingStore:
    """A ``LogStore`` that fails like a cloud store; see the module docstring."""

    def __init__(
        self,
        inner: LogStore,
        *,
        seed: int,
        rates: FaultRates,
        ambiguous_operations: frozenset[str] = DEFAULT_AMBIGUOUS_OPERATIONS,
    ) -> None:
        self._inner = inner
        self._random = random.Random(seed)
        self._rates = rates
        self._ambiguous_operations = ambiguous_operations
        self.counts = FaultCounts()

    @property
    def inner(self) -> LogStore:
        return self._inner

    @property
    def url(self) -> str:
        return self._inner.url

    @property
    def instance(self) -> str:
        return self._inner.instance

    async def _call(self, name: str, operation: Callable[[], Awaitable[_Result]]) -> _Result:
        self.counts.calls += 1
        draw = self._random.random()
        rates = self._rates
        threshold = rates.timeout
        if draw < threshold:
            self.counts.timeouts += 1
            raise StorageUnavailableError(
                f"injected fault: {name} timed out before reaching the store"
            )
        threshold += rates.unavailable
        if draw < threshold:
            self.counts.unavailable += 1
            raise StorageUnavailableError(f"injected fault: {name} got 503 Service Unavailable")
        threshold += rates.throttled
        if draw < threshold:
            self.counts.throttled += 1
            raise StorageUnavailableError(f"injected fault: {name} throttled (429 SlowDown)")
        result = await operation()
        threshold += rates.ambiguous_write
        if draw < threshold and name in self._ambiguous_operations:
            self.counts.ambiguous_writes += 1
            raise StorageUnavailableError(
                f"injected fault: {name} timed out after the write landed (ambiguous)"
            )
        return result

    async def acquire_lease(self, *, wait_s: float = 0.0) -> Lease:
        return await self._call("acquire_lease", lambda: self._inner.acquire_lease(wait_s=wait_s))

    async def renew_lease(self, lease: Lease) -> Lease:
        return await self._call("renew_lease", lambda: self._inner.renew_lease(lease))

    async def release_lease(self, lease: Lease) -> None:
        await self._call("release_lease", lambda: self._inner.release_lease(lease))

    async def list_chunks(self) -> list[ChunkInfo]:
        return await self._call("list_chunks", self._inner.list_chunks)

    async def create_chunk(self, lease: Lease, number: int) -> None:
        await self._call("create_chunk", lambda: self._inner.create_chunk(lease, number))

    async def append(
        self, lease: Lease, chunk: int, *, expected_offset: int, data: bytes | bytearray
    ) -> None:
        await self._call(
            "append",
            lambda: self._inner.append(lease, chunk, expected_offset=expected_offset, data=data),
        )

    async def read_chunk(self, chunk: int, *, offset: int = 0, length: int | None = None) -> bytes:
        return await self._call(
            "read_chunk", lambda: self._inner.read_chunk(chunk, offset=offset, length=length)
        )

    async def write_checkpoint(self, lease: Lease, number: int, data: bytes) -> None:
        await self._call(
            "write_checkpoint", lambda: self._inner.write_checkpoint(lease, number, data)
        )

    async def read_checkpoint(self, number: int) -> bytes:
        return await self._call("read_checkpoint", lambda: self._inner.read_checkpoint(number))

    async def list_checkpoints(self) -> list[int]:
        return await self._call("list_checkpoints", self._inner.list_checkpoints)

    async def read_meta(self) -> tuple[Meta | None, str | None]:
        return await self._call("read_meta", self._inner.read_meta)

    async def swap_meta(self, lease: Lease, *, expected: str | None, new: Meta) -> str:
        return await self._call(
            "swap_meta", lambda: self._inner.swap_meta(lease, expected=expected, new=new)
        )

    async def delete_before(
        self, lease: Lease, number: int, *, checkpoints_before: int | None = None
    ) -> None:
        await self._call(
            "delete_before",
            lambda: self._inner.delete_before(lease, number, checkpoints_before=checkpoints_before),
        )

    async def close(self) -> None:
        await self._inner.close()
