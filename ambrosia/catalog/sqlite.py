"""The embedded catalog: one SQLite file, safe to share between processes on one machine.

URL: ``sqlite:///absolute/path/catalog.db`` or ``sqlite:///:memory:`` (tests; private to
the catalog object).

Why it is safe to share:

- Every operation is one SQLite transaction. Writers start theirs with
  ``BEGIN IMMEDIATE``, which takes the database's write lock before the first read, so
  "read the existing row, compare, insert or refuse" cannot interleave with another
  process doing the same: of two processes registering one name with different
  settings, exactly one succeeds and the other sees the winner's row and gets
  ``RegistrationConflictError``.
- A writer that finds the lock taken waits up to ``busy_timeout_s`` (SQLite's busy
  handler) before giving up with ``CatalogError``.
- The journal is in WAL mode, so readers (``get``, ``list``) never block a writer nor
  wait for one, and ``synchronous=FULL`` makes a committed registration survive a power
  loss.

The file holds a ``schema_version`` table. A file written by a newer ambrosia with a
schema this code does not know is refused (``ConfigError``) rather than misread.

sqlite3 calls block, so they run on a worker thread (``anyio.to_thread``, which serves
both asyncio and trio) under a capacity limiter of one: the connection is used by one
thread at a time, and calls from one catalog object run in the order they were made.
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from ambrosia.catalog.base import InstanceRecord
from ambrosia.errors import (
    CatalogError,
    ConfigError,
    InstanceNotFoundError,
    RegistrationConflictError,
)
from ambrosia.names import validate_instance_name

schema_version = 2
busy_timeout_s_default = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    name TEXT PRIMARY KEY NOT NULL,
    address TEXT NOT NULL,
    log_url TEXT NOT NULL,
    app TEXT,
    current_version INTEGER NOT NULL,
    upgrade_version INTEGER NOT NULL,
    replicas INTEGER NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    receive_port INTEGER NOT NULL DEFAULT 0,
    send_port INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
"""

_COLUMNS = (
    "name, address, log_url, app, current_version, upgrade_version, replicas, created, updated, "
    "receive_port, send_port"
)
# Schema 1 -> 2: the binding ports (``ambrosia coordinator``), 0 where unset.
_UPGRADES = {
    1: (
        "ALTER TABLE instances ADD COLUMN receive_port INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE instances ADD COLUMN send_port INTEGER NOT NULL DEFAULT 0",
    ),
}

_Result = TypeVar("_Result")


def utc_now_iso() -> str:
    """The default clock: the current UTC time, ISO 8601 with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _record_from_row(row: tuple[Any, ...]) -> InstanceRecord:
    try:
        return InstanceRecord(
            name=row[0],
            address=row[1],
            log_url=row[2],
            app=row[3],
            current_version=row[4],
            upgrade_version=row[5],
            replicas=row[6],
            created=row[7],
            updated=row[8],
            receive_port=row[9],
            send_port=row[10],
        )
    except ConfigError as error:
        raise CatalogError(f"catalog row for {row[0]!r} is invalid: {error}") from error


def _row_from_record(record: InstanceRecord) -> tuple[Any, ...]:
    return (
        record.name,
        record.address,
        record.log_url,
        record.app,
        record.current_version,
        record.upgrade_version,
        record.replicas,
        record.created,
        record.updated,
        record.receive_port,
        record.send_port,
    )


class _Database:
    """The synchronous core: one sqlite3 connection, one transaction per method."""

    def __init__(self, path: str, busy_timeout_s: float, clock: Callable[[], str]) -> None:
        self._clock = clock
        # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves; the
        # module's implicit transactions would start with a deferred BEGIN.
        self._connection = sqlite3.connect(
            path,
            timeout=busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=FULL")
            self._create_schema()
        except BaseException:
            self._connection.close()
            raise

    def _create_schema(self) -> None:
        with self._write_transaction() as cursor:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    cursor.execute(statement)
            rows = cursor.execute("SELECT version FROM schema_version").fetchall()
            if not rows:
                cursor.execute("INSERT INTO schema_version (version) VALUES (?)", (schema_version,))
                return
            if len(rows) == 1 and rows[0][0] in _UPGRADES:
                # A catalog of an older ambrosia: brought up to date in this transaction.
                for statement in _UPGRADES[rows[0][0]]:
                    cursor.execute(statement)
                cursor.execute("UPDATE schema_version SET version = ?", (schema_version,))
                rows = [(schema_version,)]
            if len(rows) != 1 or rows[0][0] != schema_version:
                found = ", ".join(str(row[0]) for row in rows)
                raise ConfigError(
                    f"catalog schema version {found} is not the version this ambrosia "
                    f"understands ({schema_version}); use a matching ambrosia release"
                )

    def _write_transaction(self) -> _Transaction:
        return _Transaction(self._connection)

    def register(self, record: InstanceRecord, replace: bool) -> InstanceRecord:
        with self._write_transaction() as cursor:
            row = cursor.execute(
                f"SELECT {_COLUMNS} FROM instances WHERE name = ?", (record.name,)
            ).fetchone()
            now = self._clock()
            if row is None:
                stored = record.with_timestamps(
                    created=record.created or now, updated=record.updated or now
                )
                cursor.execute(
                    f"INSERT INTO instances ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    _row_from_record(stored),
                )
                return stored
            existing = _record_from_row(row)
            differences = existing.differences(record)
            if not differences:
                return existing
            if not replace:
                raise RegistrationConflictError(record.name, "; ".join(differences))
            stored = record.with_timestamps(created=existing.created, updated=record.updated or now)
            cursor.execute(
                "UPDATE instances SET address = ?, log_url = ?, app = ?, current_version = ?, "
                "upgrade_version = ?, replicas = ?, created = ?, updated = ?, receive_port = ?, "
                "send_port = ? WHERE name = ?",
                (*_row_from_record(stored)[1:], stored.name),
            )
            return stored

    def get(self, name: str) -> InstanceRecord:
        row = self._connection.execute(
            f"SELECT {_COLUMNS} FROM instances WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise InstanceNotFoundError(name)
        return _record_from_row(row)

    def list(self) -> builtins.list[InstanceRecord]:
        rows = self._connection.execute(
            f"SELECT {_COLUMNS} FROM instances ORDER BY name"
        ).fetchall()
        return [_record_from_row(row) for row in rows]

    def remove(self, name: str) -> None:
        with self._write_transaction() as cursor:
            deleted = cursor.execute("DELETE FROM instances WHERE name = ?", (name,)).rowcount
            if deleted == 0:
                raise InstanceNotFoundError(name)

    def close(self) -> None:
        self._connection.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def __enter__(self) -> sqlite3.Cursor:
        cursor = self._connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        return cursor

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self._connection.execute("COMMIT")
        else:
            self._connection.execute("ROLLBACK")


def _translate(error: sqlite3.Error, url: str) -> CatalogError:
    text = str(error)
    if "locked" in text or "busy" in text:
        return CatalogError(f"catalog {url} stayed locked by another process: {text}")
    return CatalogError(f"catalog {url} failed: {text}")


class SQLiteCatalog:
    """A ``Catalog`` in one SQLite file. Create it with ``await SQLiteCatalog.open(...)``."""

    def __init__(self, url: str, database: _Database) -> None:
        self._url = url
        self._database: _Database | None = database
        self._limiter = anyio.CapacityLimiter(1)

    @classmethod
    async def open(
        cls,
        path: str,
        *,
        busy_timeout_s: float = busy_timeout_s_default,
        clock: Callable[[], str] = utc_now_iso,
    ) -> SQLiteCatalog:
        """Open (creating if needed, parent directories included) the catalog at ``path``.

        ``path`` is an absolute file path or ``:memory:``. ``clock`` returns the ISO
        timestamp stored in ``created``/``updated`` (tests pass a fixed one).
        """
        url = f"sqlite:///{path}" if path == ":memory:" else f"sqlite://{path}"
        if path != ":memory:":
            if not Path(path).is_absolute():
                raise ConfigError(f"catalog path {path!r} must be absolute")
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ConfigError(
                    f"cannot create the directory of catalog {url}: {error}"
                ) from error

        def connect() -> _Database:
            try:
                return _Database(path, busy_timeout_s, clock)
            except sqlite3.DatabaseError as error:
                raise ConfigError(f"cannot open catalog {url}: {error}") from error

        database = await anyio.to_thread.run_sync(connect)
        return cls(url, database)

    @property
    def url(self) -> str:
        return self._url

    async def _run(self, operation: Callable[[_Database], _Result]) -> _Result:
        database = self._database
        if database is None:
            raise CatalogError(f"catalog {self._url} is closed")

        def call() -> _Result:
            try:
                return operation(database)
            except sqlite3.Error as error:
                raise _translate(error, self._url) from error

        return await anyio.to_thread.run_sync(call, limiter=self._limiter)

    async def register(self, record: InstanceRecord, *, replace: bool = False) -> InstanceRecord:
        return await self._run(lambda database: database.register(record, replace))

    async def get(self, name: str) -> InstanceRecord:
        validate_instance_name(name)
        return await self._run(lambda database: database.get(name))

    async def list(self) -> builtins.list[InstanceRecord]:
        return await self._run(lambda database: database.list())

    async def remove(self, name: str) -> None:
        validate_instance_name(name)
        await self._run(lambda database: database.remove(name))

    async def close(self) -> None:
        database, self._database = self._database, None
        if database is not None:
            await anyio.to_thread.run_sync(database.close, limiter=self._limiter)

    async def __aenter__(self) -> SQLiteCatalog:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()
