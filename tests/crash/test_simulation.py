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

import os
import random
from collections.abc import Iterator

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
    assert summary.crash_points >= SEEDS, "the crash points fire"
    assert summary.calls == SEEDS * 60, "every run ends with every call checked"
    assert not summary.failures, "\n".join(verdict.describe() for verdict in summary.failures)


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
    assert summary.crash_points >= 2 * CLOUD_SEEDS, "the crash points fire"
    assert summary.calls == CLOUD_SEEDS * CLOUD_CALLS, "every run ends with every call checked"
    assert not summary.failures, "\n".join(verdict.describe() for verdict in summary.failures)


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
