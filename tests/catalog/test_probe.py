"""The cloud catalogs' check of their table at open outlasts a request nobody answers.

Like the log stores' probe (tests/backends/test_cloud.py): a catalog service that leaves
one request unanswered (busy, throttling, restarting) does not fail a start; one that
never answers is a ``ConfigError`` after ``PROBE_ATTEMPTS`` tries, within their bound.
"""

from __future__ import annotations

import time
import uuid

import anyio
import pytest

from ambrosia.backends.retry import PROBE_ATTEMPTS
from ambrosia.catalog import open_catalog
from ambrosia.errors import ConfigError
from ambrosia.testing.emulators import (
    AZURITE_ACCOUNT_KEY,
    AZURITE_ACCOUNT_NAME,
    Azurite,
    MotoServer,
)
from tests.stalling import StallingForwarder

pytestmark = pytest.mark.emulator

TIMEOUT_S = 1.0


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def _options(catalog: str, port: int) -> dict[str, object]:
    if catalog == "aztable":
        return {
            "connection_string": (
                "DefaultEndpointsProtocol=http;"
                f"AccountName={AZURITE_ACCOUNT_NAME};AccountKey={AZURITE_ACCOUNT_KEY};"
                f"TableEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT_NAME};"
            )
        }
    return {"endpoint_url": f"http://127.0.0.1:{port}", "region": "us-east-1"}


@pytest.mark.parametrize("catalog", ["aztable", "dynamodb"])
def test_the_probe_at_open_outlasts_a_request_the_service_does_not_answer(
    catalog: str, azurite: Azurite, moto_server: MotoServer, aws_credentials: None
) -> None:
    emulator_port = azurite.table_port if catalog == "aztable" else moto_server.port
    table = f"probe{uuid.uuid4().hex[:10]}"
    url = f"{catalog}://{table}"

    async def main() -> None:
        async with StallingForwarder(emulator_port, stalled=1).running() as busy:
            started = time.monotonic()
            opened = await open_catalog(
                url, create=True, connect_timeout_s=TIMEOUT_S, **_options(catalog, busy.port)
            )
            await opened.close()
            assert busy.connections >= 2
            assert time.monotonic() - started >= TIMEOUT_S
        async with StallingForwarder(emulator_port, stalled=1_000).running() as dead:
            started = time.monotonic()
            with pytest.raises(ConfigError, match=rf"cannot reach .*\({PROBE_ATTEMPTS} attempts\)"):
                await open_catalog(url, connect_timeout_s=TIMEOUT_S, **_options(catalog, dead.port))
            assert dead.connections == PROBE_ATTEMPTS
            assert time.monotonic() - started <= PROBE_ATTEMPTS * (TIMEOUT_S + 1.0) + 1.0

    anyio.run(main)
