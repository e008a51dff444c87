"""Session-wide emulators for the cloud backend tests: real processes, stopped by PID.

Without an emulator the tests that need it are skipped with the reason, except in CI
(the CI environment variable is set), where a missing emulator fails the run.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ambrosia.testing.emulators import (
    Azurite,
    MotoServer,
    start_azurite,
    start_moto_server,
    start_or_skip,
)


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    emulator = start_or_skip(start_azurite)
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    emulator = start_or_skip(start_moto_server)
    try:
        yield emulator
    finally:
        emulator.stop()
