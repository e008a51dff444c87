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

Driving it from outside a process
---------------------------------
A testing knob, not a deployment feature. It lives here, beside the injector, so that
``ambrosia.host`` reaches it without product code importing ``ambrosia.testing`` (tests
import it from ``ambrosia.testing.faults`` too). When a process started by ``ambrosia
run`` finds the environment variable ``AMBROSIA_FAULTS``, ``ambrosia.host.serve`` wraps
its log store in ``FaultInjectingStore`` (``install_faults``)::

    AMBROSIA_FAULTS="seed=7,timeout=0.02,unavailable=0.02,throttled=0.02,ambiguous=0.05"

Keys: ``seed`` (int, default 0), the four rates (``timeout``, ``unavailable``,
``throttled``, ``ambiguous``; probabilities per call, default 0), and ``ops``: which
store operations get faults, ``+``-separated, or ``all`` (the default: the coordinator
retries every store call, start-up reads and lease calls included). Ambiguous writes
apply to ``append``, ``create_chunk`` and ``write_checkpoint`` only.

Between the coordinator and the fault injector sits ``ObservedStore``, which watches
the retries from the outside: consecutive calls of one operation with the same
arguments are attempts of one logical call (that is how ``call_with_retry`` repeats an
operation). It records attempts per call, the pause before each retry and the span of
each call, and ``FaultReporter`` writes them, with the injector's counts, as JSON to
``$AMBROSIA_FAULTS_REPORT_DIR`` (default ``$AMBROSIA_STATUS_DIR``), file
``<instance>.faults.<pid>.json``, rewritten every ``report_interval_s`` and at exit, so
a test that SIGKILLs the process still finds a recent report. The test compares them
with the ``RetryPolicy`` the process ran with (also in the report).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ambrosia.backends.base import ChunkInfo, Lease, LogStore, Meta
from ambrosia.backends.retry import RetryPolicy, is_retriable
from ambrosia.errors import ConfigError, StorageUnavailableError

__all__ = [
    "ALL_OPERATIONS",
    "FAULTS_ENVIRONMENT_VARIABLE",
    "REPORT_DIRECTORY_ENVIRONMENT_VARIABLE",
    "WRITE_OPERATIONS",
    "CallObservations",
    "FaultCounts",
    "FaultInjectingStore",
    "FaultRates",
    "FaultReporter",
    "FaultSpec",
    "ObservedStore",
    "install_faults",
    "parse_fault_spec",
    "read_fault_reports",
]

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


# -- the AMBROSIA_FAULTS knob ------------------------------------------------------------

FAULTS_ENVIRONMENT_VARIABLE = "AMBROSIA_FAULTS"
REPORT_DIRECTORY_ENVIRONMENT_VARIABLE = "AMBROSIA_FAULTS_REPORT_DIR"
ALL_OPERATIONS = frozenset(
    {
        "acquire_lease",
        "renew_lease",
        "release_lease",
        "list_chunks",
        "create_chunk",
        "append",
        "read_chunk",
        "write_checkpoint",
        "read_checkpoint",
        "list_checkpoints",
        "read_meta",
        "swap_meta",
        "delete_before",
    }
)
_RATE_KEYS = {
    "timeout": "timeout",
    "unavailable": "unavailable",
    "throttled": "throttled",
    "ambiguous": "ambiguous_write",
}
WRITE_OPERATIONS = frozenset({"append", "create_chunk", "write_checkpoint", "swap_meta"})
report_interval_s = 0.2


@dataclass(frozen=True, slots=True)
class FaultSpec:
    seed: int
    rates: FaultRates
    operations: frozenset[str]


def parse_fault_spec(text: str) -> FaultSpec:
    """Parse the value of ``AMBROSIA_FAULTS``; ConfigError names the bad part."""
    where = FAULTS_ENVIRONMENT_VARIABLE
    seed = 0
    rates: dict[str, float] = {}
    operations = ALL_OPERATIONS
    for part in (piece.strip() for piece in text.split(",")):
        if not part:
            continue
        key, separator, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not separator:
            raise ConfigError(f"{where}: {part!r} is not KEY=VALUE")
        if key == "seed":
            try:
                seed = int(value)
            except ValueError:
                raise ConfigError(f"{where}: seed {value!r} is not an integer") from None
        elif key in _RATE_KEYS:
            try:
                rates[_RATE_KEYS[key]] = float(value)
            except ValueError:
                raise ConfigError(f"{where}: {key} {value!r} is not a number") from None
        elif key == "ops":
            names = frozenset(name for name in value.split("+") if name)
            if names == {"all"}:
                names = ALL_OPERATIONS
            unknown = names - ALL_OPERATIONS
            if unknown or not names:
                raise ConfigError(
                    f"{where}: unknown operations {sorted(unknown)}; "
                    f"known: {', '.join(sorted(ALL_OPERATIONS))} or all"
                )
            operations = names
        else:
            raise ConfigError(
                f"{where}: unknown key {key!r}; known: seed, {', '.join(_RATE_KEYS)}, ops"
            )
    try:
        fault_rates = FaultRates(**rates)
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None
    return FaultSpec(seed=seed, rates=fault_rates, operations=operations)


@dataclass(slots=True)
class _OpenCall:
    started_s: float
    attempts: int = 1
    failed_at_s: float | None = None


@dataclass(slots=True)
class CallObservations:
    """Retry behaviour as seen from outside ``call_with_retry`` (mutable counters)."""

    calls: int = 0
    retried_calls: int = 0
    retries: int = 0
    attempts_per_call_max: int = 0
    retry_pause_s_max: float = 0.0
    call_span_s_max: float = 0.0
    exhausted_calls: int = 0
    non_retriable_failures: int = 0
    retries_by_operation: dict[str, int] = field(default_factory=dict)


class ObservedStore:
    """A ``LogStore`` that routes some operations through a fault injector and watches
    the retries of every operation; see the module docstring."""

    def __init__(
        self,
        inner: LogStore,
        faulty: FaultInjectingStore,
        operations: frozenset[str],
        policy: RetryPolicy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self.faulty = faulty
        self._operations = operations
        self.policy = policy
        self._clock = clock
        self._open: dict[tuple[Any, ...], _OpenCall] = {}
        self.observations = CallObservations()

    @property
    def url(self) -> str:
        return self._inner.url

    @property
    def instance(self) -> str:
        return self._inner.instance

    @property
    def open_calls(self) -> int:
        return len(self._open)

    def _target(self, name: str) -> LogStore:
        return self.faulty if name in self._operations else self._inner

    async def _observe(
        self, key: tuple[Any, ...], operation: Callable[[], Awaitable[_Result]]
    ) -> _Result:
        observed = self.observations
        now_s = self._clock()
        call = self._open.get(key)
        if call is None or call.failed_at_s is None:
            call = _OpenCall(started_s=now_s)
            self._open[key] = call
            observed.calls += 1
        else:
            call.attempts += 1
            observed.retries += 1
            name = str(key[0])
            observed.retries_by_operation[name] = observed.retries_by_operation.get(name, 0) + 1
            if call.attempts == 2:
                observed.retried_calls += 1
            observed.retry_pause_s_max = max(observed.retry_pause_s_max, now_s - call.failed_at_s)
            call.failed_at_s = None
        observed.attempts_per_call_max = max(observed.attempts_per_call_max, call.attempts)
        try:
            result = await operation()
        except Exception as error:
            retriable = is_retriable(error)
            if retriable and call.attempts < self.policy.attempts_max:
                call.failed_at_s = self._clock()  # the retry, if any, comes as the next call
                raise
            self._finish(key, call)
            if retriable:
                observed.exhausted_calls += 1
            else:
                observed.non_retriable_failures += 1
            raise
        self._finish(key, call)
        return result

    def _finish(self, key: tuple[Any, ...], call: _OpenCall) -> None:
        self._open.pop(key, None)
        span_s = self._clock() - call.started_s
        self.observations.call_span_s_max = max(self.observations.call_span_s_max, span_s)

    async def acquire_lease(self, *, wait_s: float = 0.0) -> Lease:
        target = self._target("acquire_lease")
        return await self._observe(("acquire_lease",), lambda: target.acquire_lease(wait_s=wait_s))

    async def renew_lease(self, lease: Lease) -> Lease:
        target = self._target("renew_lease")
        return await self._observe(("renew_lease", lease), lambda: target.renew_lease(lease))

    async def release_lease(self, lease: Lease) -> None:
        target = self._target("release_lease")
        await self._observe(("release_lease", lease), lambda: target.release_lease(lease))

    async def list_chunks(self) -> list[ChunkInfo]:
        return await self._observe(("list_chunks",), self._target("list_chunks").list_chunks)

    async def create_chunk(self, lease: Lease, number: int) -> None:
        target = self._target("create_chunk")
        await self._observe(
            ("create_chunk", lease, number), lambda: target.create_chunk(lease, number)
        )

    async def append(
        self, lease: Lease, chunk: int, *, expected_offset: int, data: bytes | bytearray
    ) -> None:
        target = self._target("append")
        await self._observe(
            ("append", lease, chunk, expected_offset, len(data)),
            lambda: target.append(lease, chunk, expected_offset=expected_offset, data=data),
        )

    async def read_chunk(self, chunk: int, *, offset: int = 0, length: int | None = None) -> bytes:
        target = self._target("read_chunk")
        return await self._observe(
            ("read_chunk", chunk, offset, length),
            lambda: target.read_chunk(chunk, offset=offset, length=length),
        )

    async def write_checkpoint(self, lease: Lease, number: int, data: bytes) -> None:
        target = self._target("write_checkpoint")
        await self._observe(
            ("write_checkpoint", lease, number),
            lambda: target.write_checkpoint(lease, number, data),
        )

    async def read_checkpoint(self, number: int) -> bytes:
        target = self._target("read_checkpoint")
        return await self._observe(
            ("read_checkpoint", number), lambda: target.read_checkpoint(number)
        )

    async def list_checkpoints(self) -> list[int]:
        target = self._target("list_checkpoints")
        return await self._observe(("list_checkpoints",), target.list_checkpoints)

    async def read_meta(self) -> tuple[Meta | None, str | None]:
        return await self._observe(("read_meta",), self._target("read_meta").read_meta)

    async def swap_meta(self, lease: Lease, *, expected: str | None, new: Meta) -> str:
        target = self._target("swap_meta")
        return await self._observe(
            ("swap_meta", lease, expected, new),
            lambda: target.swap_meta(lease, expected=expected, new=new),
        )

    async def delete_before(
        self, lease: Lease, number: int, *, checkpoints_before: int | None = None
    ) -> None:
        target = self._target("delete_before")
        await self._observe(
            ("delete_before", lease, number),
            lambda: target.delete_before(lease, number, checkpoints_before=checkpoints_before),
        )

    async def close(self) -> None:
        await self._inner.close()


class FaultReporter:
    """Writes an ``ObservedStore``'s record to a JSON file, periodically and at the end."""

    def __init__(self, store: ObservedStore, spec: FaultSpec, path: Path | None) -> None:
        self.store = store
        self.spec = spec
        self.path = path
        self._task: asyncio.Task[None] | None = None

    def report(self) -> dict[str, Any]:
        return {
            "instance": self.store.instance,
            "pid": os.getpid(),
            "seed": self.spec.seed,
            "rates": asdict(self.spec.rates),
            "operations": sorted(self.spec.operations),
            "policy": asdict(self.store.policy),
            "injected": {
                **asdict(self.store.faulty.counts),
                "total": self.store.faulty.counts.injected,
            },
            "observed": asdict(self.store.observations),
            "open_calls": self.store.open_calls,
        }

    def write(self) -> None:
        if self.path is None:
            return
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(self.report()))
        os.replace(temporary, self.path)

    def start(self) -> None:
        if self.path is not None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            self.write()
            await asyncio.sleep(report_interval_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.write()


def install_faults(
    store: LogStore,
    text: str,
    policy: RetryPolicy,
    environ: Mapping[str, str] | None = None,
) -> tuple[ObservedStore, FaultReporter]:
    """Wrap ``store`` as ``AMBROSIA_FAULTS`` (``text``) says; see the module docstring."""
    environment = os.environ if environ is None else environ
    spec = parse_fault_spec(text)
    faulty = FaultInjectingStore(store, seed=spec.seed, rates=spec.rates)
    observed = ObservedStore(store, faulty, spec.operations, policy)
    directory = environment.get(REPORT_DIRECTORY_ENVIRONMENT_VARIABLE) or environment.get(
        "AMBROSIA_STATUS_DIR"
    )
    path = None
    if directory:
        path = Path(directory) / f"{store.instance}.faults.{os.getpid()}.json"
    return observed, FaultReporter(observed, spec, path)


def read_fault_reports(directory: Path, instance: str) -> list[dict[str, Any]]:
    """Every report an instance's processes left in ``directory`` (one per process)."""
    reports = []
    for path in sorted(directory.glob(f"{instance}.faults.*.json")):
        decoded: dict[str, Any] = json.loads(path.read_text())
        reports.append(decoded)
    return reports
