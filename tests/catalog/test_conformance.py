"""One set of catalog semantics, checked on every catalog: sqlite, Azure Tables, DynamoDB.

The semantics are ``ambrosia.catalog.base``'s: idempotent registration, a conflict named
field by field unless replaced, a replacement keeping ``created``, timestamps given by
the caller kept, ``list`` in name order, and of many processes registering one name with
different settings exactly one winner. Azure Tables runs on Azurite and DynamoDB on a
moto server (session fixtures in tests/conftest.py); each test gets a fresh table.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from ambrosia.catalog import Catalog, InstanceRecord, open_catalog
from ambrosia.errors import CatalogError, InstanceNotFoundError, RegistrationConflictError

BACKENDS = ["sqlite", "aztable", "dynamodb"]

Opener = Callable[[], Awaitable[Catalog]]


@pytest.fixture(params=BACKENDS)
def open_fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens catalogs on one fresh table of the backend (created by the first open)."""
    backend: str = request.param
    options: dict[str, object] = {}
    if backend == "sqlite":
        url = f"sqlite://{tmp_path / 'catalog.db'}"
    elif backend == "aztable":
        request.applymarker(pytest.mark.emulator)
        options["connection_string"] = request.getfixturevalue("azurite").connection_string
        url = f"aztable://catalog{uuid.uuid4().hex[:12]}"
    else:
        request.applymarker(pytest.mark.emulator)
        request.getfixturevalue("dynamodb_env")
        url = f"dynamodb://catalog-{uuid.uuid4().hex[:12]}"
    created = False

    async def opener() -> Catalog:
        nonlocal created
        create = {} if backend == "sqlite" or created else {"create": True}
        catalog = await open_catalog(url, **options, **create)
        created = True
        assert catalog.url == url
        return catalog

    return opener


def _record(name: str, port: int = 7000, **changes: object) -> InstanceRecord:
    settings: dict[str, object] = {
        "name": name,
        "address": f"127.0.0.1:{port}",
        "log_url": f"s3://logs/{name}",
        "app": "examples.counter:Counter",
    }
    settings.update(changes)
    return InstanceRecord(**settings)  # type: ignore[arg-type]


def test_register_get_list_remove(open_fresh: Opener) -> None:
    async def main() -> None:
        catalog = await open_fresh()
        try:
            stored_b = await catalog.register(_record("b", 7001))
            stored_a = await catalog.register(_record("a", 7000, app=None, replicas=3))
            assert stored_a.created and stored_a.updated
            assert stored_a.app is None and stored_a.replicas == 3
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
            # What one catalog object wrote, another one (another process) reads.
            other = await open_fresh()
            try:
                assert await other.list() == [stored_b]
            finally:
                await other.close()
        finally:
            await catalog.close()

    anyio.run(main)


def test_conflict_names_the_fields_and_replacement_keeps_created(open_fresh: Opener) -> None:
    async def main() -> None:
        catalog = await open_fresh()
        try:
            first = await catalog.register(_record("server", 7000))
            with pytest.raises(RegistrationConflictError, match=r"address.*replicas"):
                await catalog.register(_record("server", 7100, replicas=2))
            assert await catalog.get("server") == first
            replaced = await catalog.register(_record("server", 7100), replace=True)
            assert replaced.address == "127.0.0.1:7100"
            assert replaced.created == first.created
            assert await catalog.get("server") == replaced
            # Registered again after a removal: a new row, not the old one revived.
            await catalog.remove("server")
            again = await catalog.register(_record("server", 7200))
            assert await catalog.get("server") == again
        finally:
            await catalog.close()

    anyio.run(main)


def test_timestamps_given_by_the_caller_are_kept(open_fresh: Opener) -> None:
    async def main() -> None:
        catalog = await open_fresh()
        try:
            given = _record(
                "a", created="2026-01-01T00:00:00+00:00", updated="2026-01-02T00:00:00+00:00"
            )
            assert await catalog.register(given) == given
            assert await catalog.get("a") == given
        finally:
            await catalog.close()

    anyio.run(main)


def test_concurrent_conflicting_registrations_have_one_winner(open_fresh: Opener) -> None:
    """Twelve catalogs (as twelve processes) register one name with different ports."""
    racers = 12
    winners: list[int] = []
    conflicts: list[int] = []

    async def main() -> None:
        setup = await open_fresh()
        await setup.close()
        catalogs = [await open_fresh() for _ in range(racers)]
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


def test_concurrent_replacements_each_land_whole(open_fresh: Opener) -> None:
    """Replacements racing on one row: each succeeds, the row is one of them, whole."""
    racers = 8

    async def main() -> None:
        setup = await open_fresh()
        first = await setup.register(_record("moving", 9000))
        await setup.close()
        catalogs = [await open_fresh() for _ in range(racers)]
        results: list[InstanceRecord] = []
        try:

            async def race(index: int) -> None:
                record = _record("moving", 9001 + index, replicas=1 + index)
                results.append(await catalogs[index].register(record, replace=True))

            async with anyio.create_task_group() as tasks:
                for index in range(racers):
                    tasks.start_soon(race, index)
            stored = await catalogs[0].get("moving")
            assert stored in results
            assert stored.created == first.created
            # Address and replicas were written together: never one racer's with another's.
            assert stored.replicas == int(stored.address.rsplit(":", 1)[1]) - 9000
        finally:
            for catalog in catalogs:
                await catalog.close()

    anyio.run(main)


def test_closed_catalog_refuses_calls(open_fresh: Opener) -> None:
    async def main() -> None:
        catalog = await open_fresh()
        await catalog.close()
        await catalog.close()
        with pytest.raises(CatalogError, match="closed"):
            await catalog.list()

    anyio.run(main)
