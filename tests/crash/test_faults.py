"""Exactly-once under injected storage faults AND SIGKILLs, with the retries kept in bounds.

Both processes of the crash scenario run with ``AMBROSIA_FAULTS`` (a fresh seed per
process start): every call to their log stores may time out, get a 503 or be throttled,
and writes may time out after they landed (ambiguous writes). The processes
report what was injected and how the retries went (``ambrosia.testing.faults``); the test
checks the workload's exactly-once outcome and that every retried call stayed within the
``RetryPolicy`` the deployment file gave the processes.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from ambrosia.backends import open_store
from ambrosia.backends.base import LogStore
from ambrosia.backends.faults import FaultInjectingStore, FaultRates
from ambrosia.backends.retry import RetryPolicy, RetryStats, call_with_retry
from ambrosia.binding.dispatcher import in_process
from ambrosia.binding.immortal import Immortal, impulse, rpc
from ambrosia.coordinator.runtime import Config, Runtime
from ambrosia.errors import ConfigError
from ambrosia.testing.crash import CrashSettings, run_crash_scenario
from ambrosia.testing.faults import (
    ALL_OPERATIONS,
    WRITE_OPERATIONS,
    ObservedStore,
    parse_fault_spec,
    read_fault_reports,
)

RATES = "timeout=0.03,unavailable=0.03,throttled=0.03,ambiguous=0.08"
POLICY = RetryPolicy(attempts_max=10, delay_initial_s=0.002, delay_max_s=0.05, total_s_max=10.0)
# Scheduling noise on a busy machine, on top of the policy's own pauses.
SLACK_S = 1.0
# A liveness limit, not a speed check: becoming primary or writing a checkpoint takes
# well under a second here, even on a loaded 2-core machine.
LIVENESS_S = 30.0


def test_fault_spec_parses_every_key() -> None:
    spec = parse_fault_spec(f"seed=7,{RATES},ops=append+swap_meta")
    assert spec.seed == 7
    assert spec.rates == FaultRates(
        timeout=0.03, unavailable=0.03, throttled=0.03, ambiguous_write=0.08
    )
    assert spec.operations == {"append", "swap_meta"}
    assert parse_fault_spec("timeout=0.1").operations == ALL_OPERATIONS
    assert parse_fault_spec("ops=all").operations == ALL_OPERATIONS


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("seed=x", "seed"),
        ("timeout=lots", "timeout"),
        ("timeout=0.7,unavailable=0.7", "sum to at most 1"),
        ("ops=append+fly", "fly"),
        ("latency=0.1", "latency"),
        ("timeout", "KEY=VALUE"),
    ],
)
def test_fault_spec_errors_name_the_bad_part(text: str, named: str) -> None:
    with pytest.raises(ConfigError, match="AMBROSIA_FAULTS") as caught:
        parse_fault_spec(text)
    assert named in str(caught.value)


def test_observed_store_counts_the_retries_of_call_with_retry() -> None:
    """In process, without kills, the observer's counts match the retry loop's exactly."""
    rates = FaultRates(timeout=0.1, unavailable=0.1, throttled=0.1, ambiguous_write=0.1)
    stats = RetryStats()

    async def main() -> ObservedStore:
        inner = await open_store(f"memory://observed-{uuid.uuid4().hex}", "solo")
        observed = ObservedStore(
            inner, FaultInjectingStore(inner, seed=5, rates=rates), WRITE_OPERATIONS, POLICY
        )
        lease = await observed.acquire_lease()

        async def retried(operation: Callable[[], Awaitable[object]]) -> None:
            await call_with_retry(operation, POLICY, stats=stats)

        await retried(lambda: observed.create_chunk(lease, 0))
        offset = 0
        for index in range(200):
            data = f"page {index}".encode()
            await retried(
                functools.partial(observed.append, lease, 0, expected_offset=offset, data=data)
            )
            offset += len(data)
        assert await inner.read_chunk(0) == b"".join(
            f"page {index}".encode() for index in range(200)
        )
        return observed

    observed = asyncio.run(main())
    seen = observed.observations
    assert observed.faulty.counts.injected > 20
    assert seen.retries == stats.retries == observed.faulty.counts.injected
    assert seen.attempts_per_call_max == stats.attempts_per_call_max
    assert seen.calls == stats.calls + 1  # + the acquire_lease made outside call_with_retry
    assert seen.exhausted_calls == 0 and observed.open_calls == 0


@pytest.mark.crash
def test_crash_with_faults_on_both_processes(tmp_path: Path) -> None:
    config = tmp_path / "ambrosia.toml"
    config.write_text(
        "[coordinator.retry_policy]\n"
        f"attempts_max = {POLICY.attempts_max}\n"
        f"delay_initial_s = {POLICY.delay_initial_s}\n"
        f"delay_max_s = {POLICY.delay_max_s}\n"
        f"total_s_max = {POLICY.total_s_max}\n"
    )

    def start_env(name: str, start_number: int) -> dict[str, str]:
        seed = 1000 * start_number + (1 if name == "server" else 2)
        return {"AMBROSIA_FAULTS": f"seed={seed},{RATES}"}

    outcome = run_crash_scenario(
        tmp_path / "run",
        None,
        seed=20261122,
        settings=CrashSettings(total_calls=6000, kills=8),
        env={"AMBROSIA_CONFIG": str(config)},
        start_env=start_env,
    )
    deployment = outcome.deployment
    reports = [
        report
        for name in ("server", "client")
        for report in read_fault_reports(deployment.status_dir, name)
    ]
    # At most one report per process start (a start killed before it opened its store
    # leaves none), each from a process that ran our policy and spec.
    assert 0 < len(reports) <= sum(deployment.starts.values())
    injected = {"timeouts": 0, "unavailable": 0, "throttled": 0, "ambiguous_writes": 0}
    for report in reports:
        assert RetryPolicy(**report["policy"]) == POLICY
        assert set(report["operations"]) == ALL_OPERATIONS
        observed = report["observed"]
        assert observed["attempts_per_call_max"] <= POLICY.attempts_max, report
        assert observed["exhausted_calls"] == 0, report
        assert observed["non_retriable_failures"] == 0, report
        assert observed["retry_pause_s_max"] <= POLICY.delay_max_s + SLACK_S, report
        assert observed["call_span_s_max"] <= POLICY.total_s_max + SLACK_S, report
        # Every injected fault on the write path was retried, except those a SIGKILL
        # interrupted (at most a couple of calls in flight per process).
        assert observed["retries"] <= report["injected"]["total"], report
        for kind in injected:
            injected[kind] += report["injected"][kind]
    assert all(count > 0 for count in injected.values()), injected
    assert sum(injected.values()) >= 30, injected


class _Quiet(Immortal):
    @rpc
    def noop(self) -> None:
        return None


def test_start_up_survives_one_transient_read_failure() -> None:
    async def main() -> None:
        inner = await open_store(f"memory://startup-{uuid.uuid4().hex}", "solo")
        # Seed 1 draws 0.13 then 0.85: the first read_meta gets a 503, a retry succeeds.
        rates = FaultRates(unavailable=0.5)
        store: LogStore = ObservedStore(
            inner, FaultInjectingStore(inner, seed=1, rates=rates), frozenset({"read_meta"}), POLICY
        )

        async def nowhere(name: str) -> tuple[str, int]:
            raise AssertionError(f"no peers here, asked for {name}")

        runtime = Runtime(
            instance="solo",
            binding=in_process(_Quiet),
            store=store,
            listen=("127.0.0.1", 0),
            resolve=nowhere,
            config=Config(retry_policy=POLICY),
        )
        try:
            await runtime.start()
            await asyncio.wait_for(runtime.primary.wait(), LIVENESS_S)
        finally:
            await runtime.stop()

    asyncio.run(main())


class _Ticking(Immortal):
    def __init__(self) -> None:
        self.ticks = 0

    @impulse
    def tick(self) -> None:
        self.ticks += 1

    async def on_become_primary(self) -> None:
        self.start_task(self._tick_once())

    async def _tick_once(self) -> None:
        self.this.tick.impulse()


def test_retention_keeps_exactly_the_newest_checkpoints_across_restarts(tmp_path: Path) -> None:
    """Four lives of one instance, each writing a checkpoint after becoming primary: the
    store ends up with exactly ``checkpoints_kept`` checkpoints, the newest ones written."""
    kept = 2

    async def one_life(log_url: str) -> int:
        """Run until this life wrote its own checkpoint; return that checkpoint's number."""
        store = await open_store(log_url, "solo")
        listed = await store.list_checkpoints()
        newest_before = max(listed, default=-1)

        async def nowhere(name: str) -> tuple[str, int]:
            raise AssertionError(f"no peers here, asked for {name}")

        runtime = Runtime(
            instance="solo",
            binding=in_process(_Ticking),
            store=store,
            listen=("127.0.0.1", 0),
            resolve=nowhere,
            config=Config(checkpoints_kept=kept),
        )
        try:
            await runtime.start()
            await asyncio.wait_for(runtime.primary.wait(), LIVENESS_S)
            # Becoming primary asks for a checkpoint, taken after the next page (the
            # impulse). Earlier lives' checkpoints are listed from the start, so wait for
            # one newer than any of them: this life's own.
            deadline = time.monotonic() + LIVENESS_S
            while max((number for number, _ in runtime.checkpoints), default=-1) <= newest_before:
                assert runtime.failure is None, runtime.failure
                assert time.monotonic() < deadline, f"no checkpoint after {newest_before}"
                await asyncio.sleep(0.01)
            return max(number for number, _ in runtime.checkpoints)
        finally:
            await runtime.stop()

    async def main() -> tuple[list[int], list[int]]:
        log_url = (tmp_path / "log").as_uri()
        written = [await one_life(log_url) for _ in range(4)]
        store = await open_store(log_url, "solo")
        try:
            return written, await store.list_checkpoints()
        finally:
            await store.close()

    written, checkpoints = asyncio.run(main())
    assert written == sorted(set(written)), written
    assert sorted(checkpoints) == written[-kept:], (checkpoints, written)
