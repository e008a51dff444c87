"""Exactly-once across SIGKILLs: real processes, real files, random kill moments.

The scenario and its checks live in ``ambrosia.testing.crash`` (shared with the cloud
and fault-injection runs): a client sends calls 1..N (forks and awaited calls mixed) to a
server while both are SIGKILLed at random moments and restarted; afterwards the server saw
exactly 1..N in order (hash chain), the client received every result exactly once, only
the last checkpoints remain, and replaying each log from its checkpoint gives the same
final state.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ambrosia.testing.crash import CrashSettings, run_crash_scenario

pytestmark = pytest.mark.crash

SETTINGS = CrashSettings(
    total_calls=30_000,
    kills=12,
    pause_s=(0.1, 0.5),
    # Every kill lands after the client made progress since the previous one, so each of
    # the twelve interrupts real work rather than a process still starting.
    progress_between_kills=True,
    # Two of the twelve are aimed: right after "checkpoint N written", then again during
    # the recovery that follows (the pair that once left a log its recovery refused).
    checkpoint_double_kills=2,
)


@pytest.mark.parametrize("seed", [20261121, 7])
def test_crash_file_backend(tmp_path: Path, seed: int) -> None:
    outcome = run_crash_scenario(tmp_path, None, seed, settings=SETTINGS)
    assert outcome.kills >= SETTINGS.kills
