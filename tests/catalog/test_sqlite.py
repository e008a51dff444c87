"""The embedded SQLite catalog, on real files, shared by real processes."""

from __future__ import annotations

import itertools
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ambrosia.catalog import InstanceRecord, open_catalog
from ambrosia.catalog.sqlite import SQLiteCatalog, schema_version
from ambrosia.errors import (
    CatalogError,
    ConfigError,
    InstanceNotFoundError,
    RegistrationConflictError,
)

pytestmark = pytest.mark.anyio


def counting_clock() -> Callable[[], str]:
    """Distinct, predictable timestamps so records compare equal across runs."""
    ticks = itertools.count(1)
    return lambda: f"2024-01-01T00:00:{next(ticks):02d}.000000+00:00"


def record(name: str = "server", **overrides: object) -> InstanceRecord:
    settings: dict[str, object] = {
        "name": name,
        "address": "127.0.0.1:7001",
        "log_url": "file:///var/lib/ambrosia",
    }
    settings.update(overrides)
    return InstanceRecord(**settings)  # type: ignore[arg-type]


async def open_file_catalog(path: Path) -> SQLiteCatalog:
    return await SQLiteCatalog.open(str(path), clock=counting_clock())


async def test_register_get_list_remove(tmp_path: Path) -> None:
    catalog = await open_file_catalog(tmp_path / "catalog.db")
    try:
        stored = await catalog.register(record("server", app="examples.counter:Counter"))
        assert stored == record(
            "server",
            app="examples.counter:Counter",
            created="2024-01-01T00:00:01.000000+00:00",
            updated="2024-01-01T00:00:01.000000+00:00",
        )
        await catalog.register(record("client", address="127.0.0.1:7002"))
        await catalog.register(record("broker", replicas=3))
        assert await catalog.get("server") == stored
        assert [item.name for item in await catalog.list()] == ["broker", "client", "server"]

        await catalog.remove("client")
        assert [item.name for item in await catalog.list()] == ["broker", "server"]
        with pytest.raises(InstanceNotFoundError, match="'client'"):
            await catalog.get("client")
        with pytest.raises(InstanceNotFoundError):
            await catalog.remove("client")
    finally:
        await catalog.close()


async def test_same_settings_again_is_a_no_op(tmp_path: Path) -> None:
    async with await open_file_catalog(tmp_path / "catalog.db") as catalog:
        first = await catalog.register(record())
        again = await catalog.register(record())
        assert again == first
        assert again.updated == first.updated
        assert await catalog.list() == [first]


async def test_other_settings_conflict_and_name_the_fields(tmp_path: Path) -> None:
    async with await open_file_catalog(tmp_path / "catalog.db") as catalog:
        first = await catalog.register(record())
        with pytest.raises(RegistrationConflictError) as caught:
            await catalog.register(record(address="127.0.0.1:9999", current_version=2))
        message = str(caught.value)
        assert "address: '127.0.0.1:7001' != '127.0.0.1:9999'" in message
        assert "current_version: 0 != 2" in message
        assert "log_url" not in message
        assert "replace=True" in message
        assert await catalog.get("server") == first


async def test_replace_keeps_created_and_sets_updated(tmp_path: Path) -> None:
    async with await open_file_catalog(tmp_path / "catalog.db") as catalog:
        first = await catalog.register(record())
        second = await catalog.register(record(upgrade_version=1), replace=True)
        assert second.upgrade_version == 1
        assert second.created == first.created
        assert second.updated > first.updated
        assert await catalog.get("server") == second


async def test_timestamps_passed_in_are_kept(tmp_path: Path) -> None:
    async with await open_file_catalog(tmp_path / "catalog.db") as catalog:
        given = record(created="2020-05-05T00:00:00+00:00", updated="2020-06-06T00:00:00+00:00")
        assert await catalog.register(given) == given
        assert await catalog.get("server") == given


async def test_records_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "catalog.db"
    async with await open_file_catalog(path) as catalog:
        stored = await catalog.register(record(app="app.main:Server", replicas=2))
    async with await open_file_catalog(path) as reopened:
        assert await reopened.list() == [stored]


async def test_file_is_in_wal_mode_with_a_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    async with await open_file_catalog(path):
        pass
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert connection.execute("SELECT version FROM schema_version").fetchall() == [
            (schema_version,)
        ]
    finally:
        connection.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    async with await open_file_catalog(path):
        pass
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("UPDATE schema_version SET version = ?", (schema_version + 1,))
    connection.close()
    with pytest.raises(ConfigError, match="schema version"):
        await open_file_catalog(path)


async def test_a_schema_1_catalog_is_brought_up_to_date_with_its_records(tmp_path: Path) -> None:
    """A catalog written before binding ports were registered: its rows read back with
    ports 0, the file is at the current schema, and ports can then be registered."""
    path = tmp_path / "catalog.db"
    connection = sqlite3.connect(path)
    with connection:
        connection.executescript(
            """
            CREATE TABLE schema_version (version INTEGER NOT NULL);
            INSERT INTO schema_version VALUES (1);
            CREATE TABLE instances (
                name TEXT PRIMARY KEY NOT NULL, address TEXT NOT NULL, log_url TEXT NOT NULL,
                app TEXT, current_version INTEGER NOT NULL, upgrade_version INTEGER NOT NULL,
                replicas INTEGER NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL
            ) WITHOUT ROWID;
            INSERT INTO instances VALUES ('server', '127.0.0.1:7001',
                'file:///var/lib/ambrosia', 'app:Server', 0, 0, 1,
                '2024-01-01T00:00:01.000000+00:00', '2024-01-01T00:00:01.000000+00:00');
            """
        )
    connection.close()
    async with await open_file_catalog(path) as catalog:
        old = await catalog.get("server")
        assert (old.app, old.receive_port, old.send_port) == ("app:Server", 0, 0)
        ported = record(app="app:Server", receive_port=41001, send_port=41002)
        stored = await catalog.register(ported, replace=True)
        assert (stored.receive_port, stored.send_port) == (41001, 41002)
        assert stored.created == old.created
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("SELECT version FROM schema_version").fetchall() == [
            (schema_version,)
        ]
    finally:
        connection.close()
    async with await open_file_catalog(path) as catalog:
        assert (await catalog.get("server")).send_port == 41002


async def test_a_file_that_is_not_a_database_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    path.write_bytes(b"this is not a database, just bytes " * 200)
    with pytest.raises(ConfigError, match="cannot open catalog"):
        await open_file_catalog(path)


async def test_closed_catalog_refuses_calls(tmp_path: Path) -> None:
    catalog = await open_file_catalog(tmp_path / "catalog.db")
    await catalog.close()
    await catalog.close()
    with pytest.raises(CatalogError, match="closed"):
        await catalog.list()


async def test_memory_catalog_through_open_catalog() -> None:
    catalog = await open_catalog("sqlite:///:memory:", clock=counting_clock())
    try:
        assert catalog.url == "sqlite:///:memory:"
        await catalog.register(record())
        assert [item.name for item in await catalog.list()] == ["server"]
    finally:
        await catalog.close()
    other = await open_catalog("sqlite:///:memory:")
    try:
        assert await other.list() == []
    finally:
        await other.close()


async def test_invalid_name_lookups_are_config_errors(tmp_path: Path) -> None:
    async with await open_file_catalog(tmp_path / "catalog.db") as catalog:
        with pytest.raises(ConfigError):
            await catalog.get("no/slashes")


_WORKER = textwrap.dedent(
    """
    import sys
    import time
    import anyio
    from ambrosia.catalog import InstanceRecord, open_catalog
    from ambrosia.errors import RegistrationConflictError

    async def main(url, worker, count, start_at):
        catalog = await open_catalog(url)
        try:
            # All workers begin together, so their transactions overlap.
            time.sleep(max(0.0, start_at - time.time()))
            won = []
            for index in range(count):
                # Same settings from everyone: the first registers, the rest are no-ops.
                await catalog.register(InstanceRecord(
                    f"shared-{index:03d}", "127.0.0.1:7000", "file:///logs/shared"))
                await catalog.register(InstanceRecord(
                    f"own-{worker}-{index:03d}", "127.0.0.1:7001", "file:///logs/own"))
                # Different settings from everyone: exactly one may win each name.
                try:
                    await catalog.register(InstanceRecord(
                        f"contested-{index:03d}", f"127.0.0.1:{8000 + worker}", "file:///c"))
                    won.append(str(index))
                except RegistrationConflictError:
                    pass
            print(" ".join(won))
        finally:
            await catalog.close()

    anyio.run(main, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    """
)


async def test_processes_register_concurrently(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'catalog.db'}"
    count = 60
    worker_count = 3
    start_at = time.time() + 1.0
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, url, str(worker), str(count), str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for worker in range(worker_count)
    ]
    winners: dict[str, int] = {}
    for worker, process in enumerate(workers):
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
        for index in stdout.split():
            assert f"contested-{int(index):03d}" not in winners
            winners[f"contested-{int(index):03d}"] = worker
    assert len(winners) == count

    catalog = await open_catalog(url)
    try:
        records = await catalog.list()
    finally:
        await catalog.close()
    names = [item.name for item in records]
    assert names == sorted(names)
    assert len(names) == count * (2 + worker_count)
    for item in records:
        if item.name in winners:
            assert item.address == f"127.0.0.1:{8000 + winners[item.name]}"
