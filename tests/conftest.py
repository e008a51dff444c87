"""Session-wide storage emulators for every test directory: real processes, stopped by PID.

``azurite`` and ``moto_server`` start once per session on free loopback ports (Azurite again
when it gets old, see ``AzuriteKeeper``). Without an
emulator (missing, or it did not start) the tests that need it are skipped with the
emulator's error, except in CI (the ``CI`` environment variable is set), where they
fail. Every run ends with a section listing each skipped test and why
(``ambrosia.testing.skips``): a skip must not read as a pass.
``azblob_env``, ``s3_env`` and ``dynamodb_env`` put the endpoint and credentials into the
environment (``monkeypatch``), where both the processes a test starts and the test itself
(offline replay, log audits) find them, exactly as a deployment would.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# The repository root first on the import path, before anything imports ambrosia: the
# examples (``examples.*``) live there, and an editable install whose finder still lists
# ``ambrosia`` as a namespace package would otherwise hand out a package without its
# ``__init__`` (``from ambrosia import Immortal`` fails) when pytest runs outside the root.
REPOSITORY_ROOT = str(Path(__file__).resolve().parents[1])
if sys.path[:1] != [REPOSITORY_ROOT]:
    sys.path.insert(0, REPOSITORY_ROOT)

from ambrosia.testing.emulators import (  # noqa: E402
    Azurite,
    MotoServer,
    start_azurite,
    start_moto_server,
    start_or_skip,
)
from ambrosia.testing.skips import pytest_terminal_summary  # noqa: E402

__all__ = ["pytest_terminal_summary"]  # a hook: pytest finds it by name here


# Azurite runs a mark-and-sweep of its stored blocks ten minutes after it starts and every
# ten minutes after that, on its only thread; in memory, the sweep deletes each unused
# block with a scan of all of them. After ten minutes of this suite's logs it answered
# nothing for 25 s: requests timed out, and a 15 s lease would lapse. So no test is handed
# an Azurite older than this; its first sweep never comes while a test is using it.
AZURITE_AGE_S_MAX = 300.0


class AzuriteKeeper:
    """The session's Azurite, replaced by a fresh one between tests once it is old.

    Every test names its own container or prefix and creates it (``create=True``,
    ``--create-storage``), so no test needs what an earlier one stored.
    """

    def __init__(self) -> None:
        self.emulator: Azurite | None = None
        self.started = 0.0
        self.starts = 0

    def current(self) -> Azurite:
        if self.emulator is not None and time.monotonic() - self.started > AZURITE_AGE_S_MAX:
            self.stop()
        if self.emulator is None:
            self.emulator = start_or_skip(start_azurite)
            self.started = time.monotonic()
            self.starts += 1
        return self.emulator

    def stop(self) -> None:
        emulator, self.emulator = self.emulator, None
        if emulator is not None:
            emulator.stop()


@pytest.fixture(scope="session")
def azurite_keeper() -> Iterator[AzuriteKeeper]:
    keeper = AzuriteKeeper()
    try:
        yield keeper
    finally:
        keeper.stop()


@pytest.fixture
def azurite(azurite_keeper: AzuriteKeeper) -> Azurite:
    return azurite_keeper.current()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    emulator = start_or_skip(start_moto_server)
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def azblob_env(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> Azurite:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_URL", raising=False)
    return azurite


@pytest.fixture
def s3_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    # moto accepts any credentials; they must exist for the credential chain to pass.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AMBROSIA_S3_ENDPOINT_URL", moto_server.endpoint_url)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto_server


@pytest.fixture
def dynamodb_env(s3_env: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """The moto server as DynamoDB too (the catalog), besides S3 (the logs)."""
    monkeypatch.setenv("AMBROSIA_DYNAMODB_ENDPOINT_URL", s3_env.endpoint_url)
    return s3_env
