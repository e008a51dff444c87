"""The Azure Tables catalog on Azurite: the sqlite catalog's semantics, etag-conditional."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import anyio
import pytest

from ambrosia.catalog import InstanceRecord, open_catalog
from ambrosia.catalog.aztable import AzureTableCatalog
from ambrosia.errors import (
    ConfigError,
    InstanceNotFoundError,
    RegistrationConflictError,
)
from ambrosia.testing.emulators import Azurite, start_azurite, start_or_skip

pytestmark = pytest.mark.emulator


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    emulator = start_or_skip(start_azurite)
    try:
        yield emulator
    finally:
        emulator.stop()


def _table() -> str:
    return f"catalog{uuid.uuid4().hex[:12]}"


def _record(name: str, port: int = 7000, **changes: object) -> InstanceRecord:
    settings: dict[str, object] = {
        "name": name,
        "address": f"127.0.0.1:{port}",
        "log_url": f"s3://logs/{name}",
        "app": "examples.counter:Counter",
    }
    settings.update(changes)
    return InstanceRecord(**settings)  # type: ignore[arg-type]


async def _open(azurite: Azurite, table: str, **options: object) -> AzureTableCatalog:
    catalog = await open_catalog(
        f"aztable://{table}", connection_string=azurite.connection_string, **options
    )
    assert isinstance(catalog, AzureTableCatalog)
    return catalog


def test_register_get_list_remove(azurite: Azurite) -> None:
    async def main() -> None:
        catalog = await _open(azurite, _table(), create=True)
        try:
            stored_b = await catalog.register(_record("b", 7001))
            stored_a = await catalog.register(_record("a", 7000, app=None, replicas=3))
            assert stored_a.created and stored_a.updated
            assert await catalog.get("a") == stored_a
            assert await catalog.list() == [stored_a, stored_b]
            # Registering the same settings again changes nothing.
            assert await catalog.register(_record("b", 7001)) == stored_b
            await catalog.remove("a")
            with pytest.raises(InstanceNotFoundError):
                await catalog.get("a")
            with pytest.raises(InstanceNotFoundError):
                await catalog.remove("a")
            assert [record.name for record in await catalog.list()] == ["b"]
        finally:
            await catalog.close()

    anyio.run(main)


def test_conflict_without_replace_and_replacement_keeps_created(azurite: Azurite) -> None:
    async def main() -> None:
        catalog = await _open(azurite, _table(), create=True)
        try:
            first = await catalog.register(_record("server", 7000))
            with pytest.raises(RegistrationConflictError, match="address"):
                await catalog.register(_record("server", 7100))
            assert await catalog.get("server") == first
            replaced = await catalog.register(_record("server", 7100), replace=True)
            assert replaced.address == "127.0.0.1:7100"
            assert replaced.created == first.created
            assert await catalog.get("server") == replaced
        finally:
            await catalog.close()

    anyio.run(main)


def test_concurrent_conflicting_registrations_have_one_winner(azurite: Azurite) -> None:
    """Twelve catalogs (as twelve processes) register one name with different ports."""
    table = _table()
    racers = 12
    winners: list[int] = []
    conflicts: list[int] = []

    async def main() -> None:
        setup = await _open(azurite, table, create=True)
        await setup.close()
        catalogs = [await _open(azurite, table) for _ in range(racers)]
        try:

            async def race(index: int) -> None:
                try:
                    await catalogs[index].register(_record("contested", 8000 + index))
                    winners.append(index)
                except RegistrationConflictError:
                    conflicts.append(index)

            async with anyio.create_task_group() as tasks:
                for index in range(racers):
                    tasks.start_soon(race, index)
            assert len(winners) == 1, winners
            assert len(conflicts) == racers - 1
            stored = await catalogs[0].get("contested")
            assert stored.address == f"127.0.0.1:{8000 + winners[0]}"
        finally:
            for catalog in catalogs:
                await catalog.close()

    anyio.run(main)


def test_missing_table_without_create_and_bad_settings(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.delenv("AZURE_TABLES_ACCOUNT_URL", raising=False)

    async def main() -> None:
        with pytest.raises(ConfigError, match=r"does not exist.*create=True"):
            await _open(azurite, _table())
        with pytest.raises(ConfigError, match="AZURE_STORAGE_CONNECTION_STRING"):
            await open_catalog(f"aztable://{_table()}")
        with pytest.raises(ConfigError, match="unknown aztable options"):
            await _open(azurite, _table(), colour="blue")
        with pytest.raises(ConfigError, match="malformed catalog URL"):
            await open_catalog("aztable://bad-name")

    anyio.run(main)


def test_closed_catalog_refuses_calls(azurite: Azurite) -> None:
    async def main() -> None:
        catalog = await _open(azurite, _table(), create=True)
        await catalog.close()
        await catalog.close()
        with pytest.raises(Exception, match="closed"):
            await catalog.list()

    anyio.run(main)
