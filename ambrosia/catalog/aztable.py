"""The Azure Tables catalog: ``aztable://TABLE``.

Same semantics as the sqlite catalog (``ambrosia.catalog.base`` states them), on an
Azure storage account's Table service (or Azurite). Credentials come from the
environment: ``AZURE_STORAGE_CONNECTION_STRING`` (its ``TableEndpoint``), or
``AZURE_TABLES_ACCOUNT_URL`` with azure-identity's ``DefaultAzureCredential``; the options
``connection_string`` / ``account_url`` override them.

One entity per instance: PartitionKey ``instance``, RowKey the instance name (the name
alphabet is valid in a row key as it is). Azure Tables has no multi-row transactions
across partitions and no locks, so "read, compare, then write" is made safe by the
entity's ETag: a replacement is sent with ``If-Match`` on the ETag that was compared
(``MatchConditions.IfNotModified``), a first registration with an insert that fails if
the row appeared meanwhile. Whoever loses such a race reads again and decides again;
of two processes registering one name with different settings exactly one succeeds and
the other sees the winner's row (``RegistrationConflictError``). ``remove`` deletes with
If-Match too, so it never deletes a row it did not look at.

Every SDK exception is translated here into ``CatalogError`` (or ``ConfigError`` for
credentials and reachability), with the cause chained.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

from ambrosia.backends.retry import RETRIABLE_HTTP_STATUSES
from ambrosia.catalog.base import CatalogUnreachableError, InstanceRecord, probe
from ambrosia.errors import (
    CatalogError,
    ConfigError,
    InstanceNotFoundError,
    RegistrationConflictError,
)
from ambrosia.names import validate_instance_name

__all__ = ["AzureTableCatalog", "open"]

PARTITION_KEY = "instance"
race_attempts_max = 32
_Result = TypeVar("_Result")


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class _Raced(Exception):
    """An ETag-conditional write lost to another writer: read again."""


def _translate(error: AzureError, where: str) -> Exception:
    if isinstance(error, ClientAuthenticationError):
        return ConfigError(f"{where}: Azure refused the credentials: {error.message}")
    if isinstance(error, ServiceRequestError | ServiceResponseError):
        return CatalogError(f"{where}: connection failed: {error.message}")
    if isinstance(error, HttpResponseError):
        if error.status_code in (401, 403):
            return ConfigError(f"{where}: access denied; check the credentials")
        return CatalogError(
            f"{where}: HTTP {error.status_code} {getattr(error, 'error_code', None)}"
        )
    return CatalogError(f"{where}: {error.message}")


def _entity(record: InstanceRecord) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": PARTITION_KEY,
        "RowKey": record.name,
        "address": record.address,
        "log_url": record.log_url,
        "current_version": record.current_version,
        "upgrade_version": record.upgrade_version,
        "replicas": record.replicas,
        "receive_port": record.receive_port,
        "send_port": record.send_port,
        "created": record.created,
        "updated": record.updated,
    }
    if record.app is not None:
        entity["app"] = record.app
    return entity


def _record(entity: Any) -> InstanceRecord:
    try:
        return InstanceRecord(
            name=str(entity["RowKey"]),
            address=str(entity["address"]),
            log_url=str(entity["log_url"]),
            app=entity.get("app"),
            current_version=int(entity["current_version"]),
            upgrade_version=int(entity["upgrade_version"]),
            replicas=int(entity["replicas"]),
            # Absent in entities written before binding ports were registered.
            receive_port=int(entity.get("receive_port", 0)),
            send_port=int(entity.get("send_port", 0)),
            created=str(entity["created"]),
            updated=str(entity["updated"]),
        )
    except (ConfigError, KeyError, TypeError, ValueError) as error:
        name = entity.get("RowKey")
        raise CatalogError(f"catalog entity {name!r} is invalid: {error}") from error


class AzureTableCatalog:
    """A ``Catalog`` in one Azure table; create it with ``await open(url)``."""

    def __init__(
        self,
        table: TableClient,
        table_name: str,
        *,
        request_timeout_s: float,
        clock: Callable[[], str],
        closers: list[Callable[[], Awaitable[None]]],
    ) -> None:
        self._table = table
        self._table_name = table_name
        self._request_timeout_s = request_timeout_s
        self._clock = clock
        self._closers = closers
        self._closed = False

    @property
    def url(self) -> str:
        return f"aztable://{self._table_name}"

    async def _call(self, where: str, operation: Callable[[], Awaitable[_Result]]) -> _Result:
        if self._closed:
            raise CatalogError(f"catalog {self.url} is closed")
        try:
            with anyio.fail_after(self._request_timeout_s):
                return await operation()
        except TimeoutError as error:
            raise CatalogError(f"{where}: timed out") from error
        except (ResourceModifiedError, ResourceExistsError) as error:
            raise _Raced() from error
        except ResourceNotFoundError:
            raise
        except AzureError as error:
            raise _translate(error, where) from error

    async def _read(self, name: str) -> tuple[InstanceRecord, str] | None:
        where = f"catalog {self.url}, instance {name!r}"
        try:
            entity = await self._call(where, lambda: self._table.get_entity(PARTITION_KEY, name))
        except ResourceNotFoundError:
            return None
        return _record(entity), str(entity.metadata["etag"])

    async def register(self, record: InstanceRecord, *, replace: bool = False) -> InstanceRecord:
        where = f"catalog {self.url}, registering {record.name!r}"
        for _ in range(race_attempts_max):
            found = await self._read(record.name)
            now = self._clock()
            try:
                if found is None:
                    stored = record.with_timestamps(
                        created=record.created or now, updated=record.updated or now
                    )
                    entity = _entity(stored)
                    await self._call(where, lambda entity=entity: self._table.create_entity(entity))  # type: ignore[misc]
                    return stored
                existing, etag = found
                differences = existing.differences(record)
                if not differences:
                    return existing
                if not replace:
                    raise RegistrationConflictError(record.name, "; ".join(differences))
                stored = record.with_timestamps(
                    created=existing.created, updated=record.updated or now
                )
                await self._call(
                    where,
                    lambda stored=stored, etag=etag: self._table.update_entity(  # type: ignore[misc]
                        _entity(stored),
                        mode=UpdateMode.REPLACE,
                        etag=etag,
                        match_condition=MatchConditions.IfNotModified,
                    ),
                )
                return stored
            except (_Raced, ResourceNotFoundError):
                continue  # another writer changed the row between our read and write
        raise CatalogError(f"{where}: the row kept changing ({race_attempts_max} attempts)")

    async def get(self, name: str) -> InstanceRecord:
        validate_instance_name(name)
        found = await self._read(name)
        if found is None:
            raise InstanceNotFoundError(name)
        return found[0]

    async def list(self) -> builtins.list[InstanceRecord]:
        async def query() -> builtins.list[InstanceRecord]:
            entities = self._table.query_entities(
                "PartitionKey eq @partition", parameters={"partition": PARTITION_KEY}
            )
            return [_record(entity) async for entity in entities]

        records = await self._call(f"catalog {self.url}, listing", query)
        return sorted(records, key=lambda record: record.name)

    async def remove(self, name: str) -> None:
        validate_instance_name(name)
        where = f"catalog {self.url}, removing {name!r}"
        for _ in range(race_attempts_max):
            found = await self._read(name)
            if found is None:
                raise InstanceNotFoundError(name)
            etag = found[1]
            try:
                await self._call(
                    where,
                    lambda etag=etag: self._table.delete_entity(  # type: ignore[misc]
                        PARTITION_KEY,
                        name,
                        etag=etag,
                        match_condition=MatchConditions.IfNotModified,
                    ),
                )
                return
            except (_Raced, ResourceNotFoundError):
                continue
        raise CatalogError(f"{where}: the row kept changing ({race_attempts_max} attempts)")

    async def close(self) -> None:
        self._closed = True
        closers, self._closers = self._closers, []
        for closer in closers:
            await closer()

    async def __aenter__(self) -> AzureTableCatalog:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


async def open(
    url: urllib.parse.SplitResult,
    *,
    create: bool = False,
    connection_string: str | None = None,
    account_url: str | None = None,
    connect_timeout_s: float = 5.0,
    request_timeout_s: float = 30.0,
    clock: Callable[[], str] = utc_now_iso,
    **unknown: object,
) -> AzureTableCatalog:
    """Open ``aztable://TABLE``; ConfigError for bad settings, a missing table without
    ``create=True``, refused credentials or an unreachable endpoint."""
    if unknown:
        raise ConfigError(f"unknown aztable options: {', '.join(sorted(unknown))}")
    table_name = url.netloc
    connection_string = connection_string or os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    account_url = account_url or os.environ.get("AZURE_TABLES_ACCOUNT_URL")
    # retry_total=0: a catalog call fails fast and the caller decides.
    settings: dict[str, Any] = {
        "retry_total": 0,
        "connection_timeout": connect_timeout_s,
        "read_timeout": request_timeout_s,
    }
    closers: list[Callable[[], Awaitable[None]]] = []
    if connection_string:
        try:
            table = TableClient.from_connection_string(
                connection_string, table_name=table_name, **settings
            )
        except (ValueError, AzureError) as error:
            raise ConfigError(f"malformed AZURE_STORAGE_CONNECTION_STRING: {error}") from error
        closers.append(table.close)
    elif account_url:
        from azure.identity.aio import DefaultAzureCredential

        credential = DefaultAzureCredential()
        table = TableClient(account_url, table_name, credential=credential, **settings)
        closers.extend([table.close, credential.close])
    else:
        raise ConfigError(
            "no Azure Tables credentials: set AZURE_STORAGE_CONNECTION_STRING, or "
            "AZURE_TABLES_ACCOUNT_URL for azure-identity (DefaultAzureCredential)"
        )
    catalog = AzureTableCatalog(
        table, table_name, request_timeout_s=request_timeout_s, clock=clock, closers=closers
    )
    try:
        await _probe_table(table, table_name, create, connect_timeout_s)
    except BaseException:
        await catalog.close()
        raise
    return catalog


async def _probe_table(table: TableClient, table_name: str, create: bool, timeout_s: float) -> None:
    """Check the table exists (create it if asked); retried while unreachable (``probe``)."""
    where = f"table {table_name!r} at {table.url}"

    async def check() -> None:
        try:
            with anyio.fail_after(timeout_s):
                try:
                    async for _ in table.query_entities(
                        "PartitionKey eq 'probe'", results_per_page=1
                    ):
                        break
                    return
                except ResourceNotFoundError:
                    if not create:
                        raise
                with contextlib.suppress(ResourceExistsError):
                    await table.create_table()
        except TimeoutError as error:
            raise CatalogUnreachableError(
                f"cannot reach Azure Tables for {where}: timed out"
            ) from error
        except ResourceNotFoundError as error:
            raise ConfigError(
                f"{where} does not exist; create it, or pass create=True (--create)"
            ) from error
        except (ServiceRequestError, ServiceResponseError) as error:
            raise CatalogUnreachableError(
                f"cannot reach Azure Tables for {where}: {error.message}"
            ) from error
        except HttpResponseError as error:
            if error.status_code in RETRIABLE_HTTP_STATUSES:
                raise CatalogUnreachableError(
                    f"cannot reach Azure Tables for {where}: HTTP {error.status_code}"
                ) from error
            raise ConfigError(str(_translate(error, where))) from error
        except AzureError as error:
            raise ConfigError(str(_translate(error, where))) from error

    await probe(check, timeout_s)
