"""The in-process crash simulation on the unpatched code: every seed ends clean.

``AMBROSIA_SIM_SEEDS`` sets how many seeds run per backend (default 60: a few hundred
crash points in well under a minute); thousands run the same way, or with
``python -m ambrosia.testing.simulation --seeds 5000``.

The cloud stores run the same simulation on their emulators (moto in server mode,
Azurite) through ``PowerLossStore``. Every request is a real HTTP round trip there, so a
run takes seconds: by default one seed each (``AMBROSIA_SIM_CLOUD_SEEDS``, from seed 1:
a crash of both at once during a recovery, one of the server in the next recovery, one
of the client while running, and both at the end) of a shorter run (``CLOUD_CALLS``);
more with ``python -m ambrosia.testing.simulation --backend s3 --seeds 100``.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Iterator
from typing import Any

import pytest

from ambrosia.testing.powerloss import PowerLossDisk
from ambrosia.testing.simulation import (
    BACKENDS,
    CLOUD_BACKENDS,
    CrashPoint,
    Schedule,
    run_schedule,
    run_seeds,
)

SEEDS = int(os.environ.get("AMBROSIA_SIM_SEEDS", "60"))
CLOUD_SEEDS = int(os.environ.get("AMBROSIA_SIM_CLOUD_SEEDS", "1"))
CLOUD_CALLS = 15


@pytest.fixture(scope="module")
def disk() -> Iterator[PowerLossDisk]:
    with PowerLossDisk(random.Random(0)).installed() as installed:
        yield installed


@pytest.mark.parametrize("backend", BACKENDS)
def test_seeded_crash_points_keep_every_promise(backend: str) -> None:
    summary = run_seeds(range(SEEDS), (backend,))
    print(summary.describe())
    assert not summary.failures, "\n".join(verdict.describe() for verdict in summary.failures)
    assert summary.crash_points >= SEEDS, "the crash points fire"
    assert summary.calls == SEEDS * 60, "every run ends with every call checked"


@pytest.mark.parametrize("backend", CLOUD_BACKENDS)
def test_seeded_crash_points_on_the_cloud_emulators(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """Each crashed writer's lease is made to run out when its next life opens the store
    (``expire_cloud_lease``), so every restart is a takeover from a dead writer: its
    chunks still leased (Azure) or reserved and unfenced (S3), its lock still naming it."""
    request.getfixturevalue("s3_env" if backend == "s3" else "azblob_env")
    summary = run_seeds(range(1, 1 + CLOUD_SEEDS), (backend,), calls=CLOUD_CALLS)
    print(summary.describe())
    assert not summary.failures, "\n".join(verdict.describe() for verdict in summary.failures)
    assert summary.crash_points >= 2 * CLOUD_SEEDS, "the crash points fire"
    assert summary.calls == CLOUD_SEEDS * CLOUD_CALLS, "every run ends with every call checked"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_crash_between_the_first_start_and_its_checkpoint(
    backend: str, disk: PowerLossDisk
) -> None:
    """Regression: a client that died after logging its first-start call and before
    its next checkpoint recovered from checkpoint 0, replayed that call, numbered its
    handler's self-calls from 1 (the runtime, not a handler, had numbered the first
    start) and stopped with a replay divergence at self-call 1."""
    for operation in range(1, 30 if backend == "file" else 12):
        schedule = Schedule(operation, backend, (CrashPoint("client", operation),))
        verdict = run_schedule(schedule, disk=disk)
        assert verdict.ok, verdict.describe()


def test_a_failure_seen_between_the_power_cut_and_the_death_is_not_a_violation() -> None:
    """Regression: a store call already inside the memory store when the client's power
    was cut failed with the store's LeaseLostError (the lease went with the power), and a
    check that ran before the queued death reported it as the client's own failure (seed
    19, depending on what earlier runs in the process left to the event loop). While its
    store is powered, the same failure is still a violation."""
    from ambrosia.errors import LeaseLostError
    from ambrosia.testing import simulation

    async def scenario() -> None:
        storage = simulation._MemoryStorage(random.Random(0))
        with simulation._watching_logs() as watch:
            run = simulation._Run(
                Schedule(0, "memory", ()), storage, calls=4, stall_s=30.0, log_watch=watch
            )
            try:
                for node in run.nodes.values():
                    await run.launch(node)
                await run.wait_until(lambda: all(n.live is not None for n in run.nodes.values()))
                client = run.nodes[simulation.CLIENT].runtime
                assert client is not None
                client.failure = LeaseLostError("lease of 'client' at epoch 1 is not current")
                with pytest.raises(simulation._Violation, match="client stopped: LeaseLostError"):
                    run.check()
                await storage.crash(simulation.CLIENT)  # the death itself not yet run
                run.check()
            finally:
                await run.abandon()
                await simulation._end_leftover_tasks(run)
                await storage.close()

    asyncio.run(scenario())


def test_a_death_still_queued_when_the_run_moves_on_is_neither_lost_nor_misapplied() -> None:
    """Regression: the storage cuts the power (in a worker thread, for the file store)
    and queues the victim's death for the loop's next turn. A run whose calls were all
    done saw its condition hold before that turn, went on to the final power loss, and
    the death queued by then arrived after it, killed the new life and found no point
    armed (``AssertionError`` in ``_handle_crash``). Now the run waits while a power loss
    is pending, and a death for a point no longer armed or a life already over is void."""
    from ambrosia.testing import simulation

    async def scenario() -> None:
        storage = simulation._MemoryStorage(random.Random(0))
        with simulation._watching_logs() as watch:
            run = simulation._Run(
                Schedule(0, "memory", ()), storage, calls=4, stall_s=30.0, log_watch=watch
            )

            def everyone_live() -> bool:
                return all(node.live is not None for node in run.nodes.values())

            def cut_with_death_queued() -> Any:
                point = CrashPoint(simulation.SERVER, 10**6)
                run.armed = point
                run._arm(point)
                return storage.crash(simulation.SERVER)  # queues the death, runs no turn

            try:
                for node in run.nodes.values():
                    await run.launch(node)
                await run.wait_until(everyone_live)

                # The condition holds all along: the queued death is still handled first.
                await cut_with_death_queued()
                await run.wait_until(lambda: True)
                assert run.verdict.crashes == ["server@1000000 (life 1, running)"]
                await run.wait_until(everyone_live)
                assert run.nodes[simulation.SERVER].lives == 2

                # The final power loss overtakes a queued death: it does not kill again.
                await cut_with_death_queued()
                await run.final_power_loss()
                await run.wait_until(everyone_live)
                for _ in range(5):
                    await asyncio.sleep(0)
                await run.wait_until(everyone_live)
                assert run.verdict.crashes[-1] == "both at the end"
                assert len(run.verdict.crashes) == 2
                assert {name: node.lives for name, node in run.nodes.items()} == {
                    simulation.SERVER: 3,
                    simulation.CLIENT: 2,
                }
                assert all(not node.dead for node in run.nodes.values())
            finally:
                await run.abandon()
                await simulation._end_leftover_tasks(run)
                await storage.close()

    asyncio.run(scenario())
