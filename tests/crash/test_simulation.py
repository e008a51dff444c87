"""The in-process crash simulation on the unpatched code: every seed ends clean.

``AMBROSIA_SIM_SEEDS`` sets how many seeds run per backend (default 60: a few hundred
crash points in well under a minute); thousands run the same way, or with
``python -m ambrosia.testing.simulation --seeds 5000``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from ambrosia.testing.powerloss import PowerLossDisk
from ambrosia.testing.simulation import (
    BACKENDS,
    CrashPoint,
    Schedule,
    run_schedule,
    run_seeds,
)

SEEDS = int(os.environ.get("AMBROSIA_SIM_SEEDS", "60"))


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
