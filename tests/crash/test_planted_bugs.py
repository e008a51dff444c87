"""Planted bugs as a standing check: the crash simulation catches every one.

Each mutant of ``planted`` (a test-only patch of the durability or sequencing code)
runs against the simulation on pinned seeds; every seed must catch it, with a violation
that names the check and what broke. The same seeds on the unpatched code are clean, so
what catches a mutant is the mutant. When a change of the simulation makes a seed stop
catching one, choose seeds again with ``python tests/crash/planted.py NAME BACKEND 0-40 5``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import planted
import pytest

from ambrosia.testing.powerloss import PowerLossDisk
from ambrosia.testing.simulation import run_seed

# Seeds that caught every mutant on every one of several runs each (``planted.py``).
SEEDS = {"file": (1, 2, 3), "memory": (1, 4)}

# What must catch each one: the check a violation starts with, and a word it must carry.
LOST = ("runtime failure", "server ledger", "client ledger")
EXPECTED: dict[str, tuple[tuple[str, ...], str | tuple[str, ...]]] = {
    # Issue 9 item 1: the lost calls are named (the receiver stops with
    # LostAcknowledgedError: "... lost acknowledged calls N..M").
    "commit_before_durable": (LOST, "lost"),
    "no_dsync": (("runtime failure",), "Error"),
    "no_fsync": (("runtime failure",), "Error"),
    # Caught by the sequence check when the peer resends from the low point ("expected"),
    # or earlier, when the stream digest at that point does not match what the peer holds
    # (the digests of issue 10: "diverged"); which comes first depends on timing.
    "resume_too_low": (("protocol", *LOST), ("expected", "replay diverged")),
    "resume_too_high": (("protocol", *LOST), ""),
    "resend_without_dedupe": (("protocol",), "expected"),
    "trim_before_acknowledgement": (LOST, "lost"),
    "checkpoint_without_output_buffers": (("checkpoint",), "neither acknowledged"),
}
FILE_ONLY = {"no_dsync", "no_fsync"}


@pytest.fixture(scope="module")
def disk() -> Iterator[PowerLossDisk]:
    with PowerLossDisk(random.Random(0)).installed() as installed:
        yield installed


def _cases() -> Iterator[tuple[str, str, int]]:
    for name in planted.MUTANTS:
        for backend, seeds in SEEDS.items():
            if backend == "file" or name not in FILE_ONLY:
                for seed in seeds:
                    yield name, backend, seed


@pytest.mark.parametrize(("name", "backend", "seed"), list(_cases()))
def test_the_simulation_catches_the_planted_bug(
    name: str, backend: str, seed: int, disk: PowerLossDisk
) -> None:
    checks, word = EXPECTED[name]
    with planted.MUTANTS[name]():
        # A stall is a catch too, but a slow one: a few seconds of nothing is plenty here.
        verdict = run_seed(seed, backend, disk=disk, stall_s=10.0)
    assert verdict.violations, f"{name} not caught:\n{verdict.describe()}"
    violation = verdict.violations[0]
    check = violation.split(":", 1)[0]
    assert check in checks, f"{name} caught by {check!r}, not {checks}:\n{verdict.describe()}"
    words = (word,) if isinstance(word, str) else word
    assert any(one in violation for one in words), verdict.describe()


@pytest.mark.parametrize(
    ("backend", "seed"), [(backend, seed) for backend, seeds in SEEDS.items() for seed in seeds]
)
def test_the_same_seeds_pass_without_the_bugs(backend: str, seed: int, disk: PowerLossDisk) -> None:
    verdict = run_seed(seed, backend, disk=disk)
    assert verdict.ok, verdict.describe()
    assert verdict.calls == 60


def test_the_patches_are_gone_after_their_block(disk: PowerLossDisk) -> None:
    """A mutant must not leak into the next test (or the product)."""
    from ambrosia.backends import file
    from ambrosia.coordinator import links
    from ambrosia.coordinator.committer import Committer
    from ambrosia.coordinator.runtime import Runtime
    from ambrosia.protocol.outputs import OutputStream

    owners = (Committer, links.IncomingLink, links.OutgoingLink, OutputStream, Runtime)
    before = [dict(vars(owner)) for owner in owners], dict(vars(file.os))
    for mutant in planted.MUTANTS.values():
        with mutant():
            pass
    assert ([dict(vars(owner)) for owner in owners], dict(vars(file.os))) == before
