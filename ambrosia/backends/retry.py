"""Retries for storage calls: capped exponential backoff with full jitter, bounded twice.

Cloud stores fail transiently (timeouts, 5xx, throttling). The backends translate those
failures into errors whose ``retriable`` flag is set (``StorageUnavailableError``); this
module retries exactly those and nothing else, so a fence or a precondition failure
reaches the caller on the first attempt.

Who retries: the caller of a ``LogStore``, never the store
----------------------------------------------------------
Retries happen at one layer, the store's caller: the coordinator wraps each store call
in ``call_with_retry`` with its ``Config.retry_policy``, and the readers outside it
(``ambrosia.inspect``, recovery's audit) do the same with theirs. A backend makes one
attempt per request (its SDK's own retries are off too) and only translates and marks
the failure. Why there, and not inside the backends:

- One set of limits. Retries nested in two layers multiply: eight attempts in the store
  times eight in the coordinator is 64 requests, and each layer's time bound is spent
  again by the other, so neither bound holds.
- The caller knows what an operation means. A failed checkpoint can wait for the next
  one, a failed retention for the next checkpoint, a failed renewal must stop the
  writer before its lease expires; one policy in the store could not tell them apart.
- Every store gets the same treatment: the file store's transient errors (descriptor
  exhaustion) and a fault injector wrapped around any store
  (``ambrosia.backends.faults``) are retried exactly like a cloud store's 503.

What this asks of the stores: a call that fails may have had some of its effect (an
append whose reply timed out after the bytes landed, a takeover that failed after it
took the lock), and the caller's retry repeats the whole call. So each store makes the
retry of a whole call finish the job rather than conflict with its own earlier attempt:
an append finds its exact bytes in place and succeeds (or raises
``OffsetMismatchError`` for the caller to read back); an acquisition proposes the lease
token of the acquisition that failed (``ambrosia.backends._cloud.AcquisitionToken``); a
lease renewal recognises the lock record it wrote; a metadata swap that finds its own
record raises ``PreconditionFailedError`` and the caller compares what it reads back
(``ambrosia.coordinator.metadata``). ``ambrosia.testing.conformance`` holds every store
to the append rule, and the stores' tests make requests land and then time out.

Delays follow "full jitter": before retry number ``n`` (1-based) the caller sleeps a
uniformly random time in ``[0, min(delay_max_s, delay_initial_s * 2 ** (n - 1))]``.
Randomizing the whole interval spreads the retries of many clients that failed together
(a throttled account, a restarted front end) instead of having them return in waves.

Two limits bound every retried call, whichever comes first:

- ``attempts_max``: the number of attempts, the first one included;
- ``total_s_max``: wall time since the first attempt; a retry whose sleep would end past
  it is not made.

When a limit is reached the last retriable error is raised unchanged (its cause chain
intact). ``RetryStats`` counts attempts and sleeps, so tests can check the bounds.

The delay computation is pure (``backoff_delay_s``); randomness, clock and sleep are
arguments of ``call_with_retry`` so tests can drive them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio

__all__ = [
    "DEFAULT_RETRY_POLICY",
    "PROBE_ATTEMPTS",
    "RETRIABLE_HTTP_STATUSES",
    "RetryPolicy",
    "RetryStats",
    "backoff_delay_s",
    "call_with_retry",
    "is_retriable",
    "probe_policy",
]

_Result = TypeVar("_Result")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry; see the module docstring."""

    attempts_max: int = 8
    delay_initial_s: float = 0.02
    delay_max_s: float = 2.0
    total_s_max: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts_max < 1:
            raise ValueError(f"attempts_max must be at least 1, not {self.attempts_max}")
        if not 0 < self.delay_initial_s <= self.delay_max_s:
            raise ValueError("need 0 < delay_initial_s <= delay_max_s")
        if self.total_s_max <= 0:
            raise ValueError("total_s_max must be positive")


DEFAULT_RETRY_POLICY = RetryPolicy()

# The HTTP statuses of a service that is there but cannot answer now: request timeout,
# throttling, and the 5xx a front end answers while it restarts or sheds load.
RETRIABLE_HTTP_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

# The probe a store or catalog makes at open: attempts while the service is unavailable.
PROBE_ATTEMPTS = 3
_PROBE_DELAY_INITIAL_S = 0.25
_PROBE_DELAY_MAX_S = 1.0


def probe_policy(timeout_s: float) -> RetryPolicy:
    """The retries of the check a store or catalog makes at open, each attempt bounded by
    ``timeout_s``: ``PROBE_ATTEMPTS`` in all, a short backoff between, and no longer than
    the attempts' timeouts and the longest backoffs together."""
    return RetryPolicy(
        attempts_max=PROBE_ATTEMPTS,
        delay_initial_s=_PROBE_DELAY_INITIAL_S,
        delay_max_s=_PROBE_DELAY_MAX_S,
        total_s_max=PROBE_ATTEMPTS * (timeout_s + _PROBE_DELAY_MAX_S),
    )


@dataclass(slots=True)
class RetryStats:
    """Counters a caller may pass in to observe retries (mutable on purpose)."""

    calls: int = 0
    attempts: int = 0
    retries: int = 0
    gave_up: int = 0
    slept_s: float = 0.0
    attempts_per_call_max: int = 0
    delays_s: list[float] = field(default_factory=list)


def is_retriable(error: BaseException) -> bool:
    """True for errors that carry ``retriable = True`` (``StorageUnavailableError``)."""
    return bool(getattr(error, "retriable", False))


# Shared jitter source: seeding a fresh generator per call costs a getrandom system call
# and microseconds on every log append, for a number drawn only when a retry happens.
_JITTER = random.Random()


def backoff_delay_s(policy: RetryPolicy, retry_number: int, random_fraction: float) -> float:
    """The sleep before retry ``retry_number`` (1-based) given a fraction in [0, 1)."""
    if retry_number < 1:
        raise ValueError("retry_number starts at 1")
    # 2 ** 60 already exceeds any cap; clamping keeps the float finite for large numbers.
    ceiling = min(policy.delay_max_s, policy.delay_initial_s * 2.0 ** min(retry_number - 1, 60))
    return ceiling * random_fraction


async def call_with_retry(
    operation: Callable[[], Awaitable[_Result]],
    policy: RetryPolicy = DEFAULT_RETRY_POLICY,
    *,
    stats: RetryStats | None = None,
    random_source: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> _Result:
    """Run ``operation`` until it succeeds, raises a non-retriable error, or a limit hits."""
    chooser = random_source if random_source is not None else _JITTER
    started_s = clock()
    attempt_number = 0
    if stats is not None:
        stats.calls += 1
    while True:
        attempt_number += 1
        if stats is not None:
            stats.attempts += 1
            stats.attempts_per_call_max = max(stats.attempts_per_call_max, attempt_number)
        try:
            return await operation()
        except Exception as error:
            if not is_retriable(error):
                raise
            delay_s = backoff_delay_s(policy, attempt_number, chooser.random())
            out_of_attempts = attempt_number >= policy.attempts_max
            out_of_time = clock() - started_s + delay_s > policy.total_s_max
            if out_of_attempts or out_of_time:
                if stats is not None:
                    stats.gave_up += 1
                raise
            if stats is not None:
                stats.retries += 1
                stats.slept_s += delay_s
                stats.delays_s.append(delay_s)
        await sleep(delay_s)
