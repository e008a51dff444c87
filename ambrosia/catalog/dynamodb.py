"""The DynamoDB catalog: ``dynamodb://TABLE`` or ``dynamodb://TABLE?region=REGION``.

Same semantics as the sqlite catalog (``ambrosia.catalog.base`` states them), in one
DynamoDB table, on aiobotocore like the s3 log store (``ambrosia[s3]``). Credentials come
from the AWS credential chain (environment, shared files, EKS Pod Identity, instance
roles). The region is the URL's ``region`` if given (a table name is unique only within
a region, so a URL that names it is one every coordinator reads alike), else the
``region`` option, ``AWS_REGION``, ``AWS_DEFAULT_REGION``, the profile's, ``us-east-1``.
The endpoint is AWS unless ``AMBROSIA_DYNAMODB_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL``
(or the ``endpoint_url`` option) names another one, such as a moto server.

Table layout (``infra/terraform/aws`` creates it; ``create=True`` does the same for
tests): partition key ``kind`` (string, always ``instance``), sort key ``name`` (string,
the instance name), the record's fields as attributes, and ``revision``: a random token
written anew with every put. One partition, sorted by name, like the Azure table's
PartitionKey/RowKey, so ``list`` is one consistent Query in name order.

DynamoDB has no ETags; ``revision`` is the ETag here. Every read is strongly consistent.
A first registration is a PutItem with ``attribute_not_exists(name)``; a replacement a
PutItem with ``revision = <the revision compared>``; ``remove`` a DeleteItem with the
same condition, so it never deletes a row it did not look at. A write whose condition
fails (``ConditionalCheckFailedException``) lost a race: read again and decide again. Of
two processes registering one name with different settings exactly one succeeds and the
other sees the winner's row (``RegistrationConflictError``). The token is random rather
than a counter, so a row removed and registered again never matches a revision read
before the removal.

The calls made, and so the IAM actions a deployment grants on the table (the Terraform
module's policy; ``tests/infra`` checks the two agree): GetItem, PutItem, DeleteItem,
Query. ``create=True`` also calls CreateTable and DescribeTable, which a deployment does
not grant: Terraform makes the table.

Every botocore exception is translated here into ``CatalogError`` (or ``ConfigError`` for
credentials and permissions), with the cause chained. One attempt per request, like the
Azure catalog: a catalog call fails fast and its caller decides.
"""

from __future__ import annotations

import builtins
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
from aiobotocore.config import AioConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from ambrosia.backends._aws import aws_session
from ambrosia.backends.retry import RETRIABLE_HTTP_STATUSES
from ambrosia.catalog import dynamodb_location as check_url
from ambrosia.catalog.base import CatalogUnreachableError, InstanceRecord, probe
from ambrosia.errors import (
    CatalogError,
    ConfigError,
    InstanceNotFoundError,
    RegistrationConflictError,
)
from ambrosia.names import validate_instance_name

__all__ = [
    "PARTITION_KEY",
    "SORT_KEY",
    "DynamoDBCatalog",
    "check_url",
    "open",
]

PARTITION_KEY = "kind"
SORT_KEY = "name"
KIND = "instance"
race_attempts_max = 32
table_active_wait_s = 60.0
# Error codes of a DynamoDB that is there but too busy to answer now.
_BUSY_CODES = frozenset(
    {
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
    }
)
_ACCESS_CODES = frozenset(
    {
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "MissingAuthenticationTokenException",
        "ExpiredTokenException",
        "IncompleteSignatureException",
    }
)
_Result = TypeVar("_Result")


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class _Raced(Exception):
    """A conditional write lost to another writer: read again."""


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _translate(error: BaseException, where: str) -> Exception:
    """The one place botocore exceptions become ambrosia errors."""
    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return ConfigError(f"{where}: no usable AWS credentials: {error}")
    if isinstance(error, BotoConnectionError | HTTPClientError):
        return CatalogError(f"{where}: connection failed: {error}")
    if isinstance(error, ClientError):
        code, status = _code(error), _status(error)
        if code in _ACCESS_CODES or status in (401, 403):
            return ConfigError(
                f"{where}: access denied ({code or status}); check the AWS credentials and "
                "the role's DynamoDB permissions on the table"
            )
        if code == "ResourceNotFoundException":
            return CatalogError(f"{where}: the table does not exist")
        return CatalogError(f"{where}: HTTP {status} {code}")
    return CatalogError(f"{where}: {error}")


def _item(record: InstanceRecord, revision: str) -> dict[str, Any]:
    item: dict[str, Any] = {
        PARTITION_KEY: {"S": KIND},
        SORT_KEY: {"S": record.name},
        "address": {"S": record.address},
        "log_url": {"S": record.log_url},
        "current_version": {"N": str(record.current_version)},
        "upgrade_version": {"N": str(record.upgrade_version)},
        "replicas": {"N": str(record.replicas)},
        "receive_port": {"N": str(record.receive_port)},
        "send_port": {"N": str(record.send_port)},
        "created": {"S": record.created},
        "updated": {"S": record.updated},
        "revision": {"S": revision},
    }
    if record.app is not None:
        item["app"] = {"S": record.app}
    return item


def _record(item: dict[str, Any]) -> tuple[InstanceRecord, str]:
    name = item.get(SORT_KEY, {}).get("S")
    try:
        app = item.get("app")
        record = InstanceRecord(
            name=str(item[SORT_KEY]["S"]),
            address=str(item["address"]["S"]),
            log_url=str(item["log_url"]["S"]),
            app=None if app is None else str(app["S"]),
            current_version=int(item["current_version"]["N"]),
            upgrade_version=int(item["upgrade_version"]["N"]),
            replicas=int(item["replicas"]["N"]),
            receive_port=int(item.get("receive_port", {"N": "0"})["N"]),
            send_port=int(item.get("send_port", {"N": "0"})["N"]),
            created=str(item["created"]["S"]),
            updated=str(item["updated"]["S"]),
        )
        return record, str(item["revision"]["S"])
    except (ConfigError, KeyError, TypeError, ValueError) as error:
        raise CatalogError(f"catalog item {name!r} is invalid: {error!r}") from error


def _new_revision() -> str:
    return uuid.uuid4().hex


class DynamoDBCatalog:
    """A ``Catalog`` in one DynamoDB table; create it with ``await open(url)``."""

    def __init__(
        self,
        client: Any,
        stack: AsyncExitStack,
        table_name: str,
        region: str,
        *,
        url_region: str | None,
        request_timeout_s: float,
        clock: Callable[[], str],
    ) -> None:
        self._client = client
        self._stack = stack
        self._table_name = table_name
        self._region = region
        self._url_region = url_region
        self._request_timeout_s = request_timeout_s
        self._clock = clock
        self._closed = False

    @property
    def url(self) -> str:
        query = f"?region={self._url_region}" if self._url_region else ""
        return f"dynamodb://{self._table_name}{query}"

    @property
    def region(self) -> str:
        return self._region

    def _key(self, name: str) -> dict[str, Any]:
        return {PARTITION_KEY: {"S": KIND}, SORT_KEY: {"S": name}}

    async def _call(self, where: str, operation: Callable[[], Awaitable[_Result]]) -> _Result:
        if self._closed:
            raise CatalogError(f"catalog {self.url} is closed")
        try:
            with anyio.fail_after(self._request_timeout_s):
                return await operation()
        except TimeoutError as error:
            raise CatalogError(f"{where}: timed out") from error
        except ClientError as error:
            if _code(error) == "ConditionalCheckFailedException":
                raise _Raced() from error
            raise _translate(error, where) from error
        except BotoCoreError as error:
            raise _translate(error, where) from error

    async def _read(self, name: str) -> tuple[InstanceRecord, str] | None:
        where = f"catalog {self.url}, instance {name!r}"
        response = await self._call(
            where,
            lambda: self._client.get_item(
                TableName=self._table_name, Key=self._key(name), ConsistentRead=True
            ),
        )
        item = response.get("Item")
        return None if item is None else _record(item)

    async def _put(self, where: str, item: dict[str, Any], expected: str | None) -> None:
        """Put ``item`` if the row is absent (``expected`` None) or still at ``expected``."""
        if expected is None:
            condition: dict[str, Any] = {
                "ConditionExpression": "attribute_not_exists(#name)",
                "ExpressionAttributeNames": {"#name": SORT_KEY},
            }
        else:
            condition = {
                "ConditionExpression": "#revision = :seen",
                "ExpressionAttributeNames": {"#revision": "revision"},
                "ExpressionAttributeValues": {":seen": {"S": expected}},
            }
        await self._call(
            where,
            lambda: self._client.put_item(TableName=self._table_name, Item=item, **condition),
        )

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
                    await self._put(where, _item(stored, _new_revision()), None)
                    return stored
                existing, revision = found
                differences = existing.differences(record)
                if not differences:
                    return existing
                if not replace:
                    raise RegistrationConflictError(record.name, "; ".join(differences))
                stored = record.with_timestamps(
                    created=existing.created, updated=record.updated or now
                )
                await self._put(where, _item(stored, _new_revision()), revision)
                return stored
            except _Raced:
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
            records: builtins.list[InstanceRecord] = []
            paginator = self._client.get_paginator("query")
            pages = paginator.paginate(
                TableName=self._table_name,
                KeyConditionExpression="#kind = :kind",
                ExpressionAttributeNames={"#kind": PARTITION_KEY},
                ExpressionAttributeValues={":kind": {"S": KIND}},
                ConsistentRead=True,
            )
            async for page in pages:
                records.extend(_record(item)[0] for item in page.get("Items", []))
            return records

        records = await self._call(f"catalog {self.url}, listing", query)
        return sorted(records, key=lambda record: record.name)

    async def remove(self, name: str) -> None:
        validate_instance_name(name)
        where = f"catalog {self.url}, removing {name!r}"
        for _ in range(race_attempts_max):
            found = await self._read(name)
            if found is None:
                raise InstanceNotFoundError(name)
            revision = found[1]
            try:
                await self._call(
                    where,
                    lambda revision=revision: self._client.delete_item(  # type: ignore[misc]
                        TableName=self._table_name,
                        Key=self._key(name),
                        ConditionExpression="#revision = :seen",
                        ExpressionAttributeNames={"#revision": "revision"},
                        ExpressionAttributeValues={":seen": {"S": revision}},
                    ),
                )
                return
            except _Raced:
                continue
        raise CatalogError(f"{where}: the row kept changing ({race_attempts_max} attempts)")

    async def close(self) -> None:
        self._closed = True
        stack, self._stack = self._stack, AsyncExitStack()
        await stack.aclose()

    async def __aenter__(self) -> DynamoDBCatalog:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


async def open(
    url: urllib.parse.SplitResult,
    *,
    create: bool = False,
    endpoint_url: str | None = None,
    region: str | None = None,
    connect_timeout_s: float = 5.0,
    request_timeout_s: float = 30.0,
    clock: Callable[[], str] = utc_now_iso,
    **unknown: object,
) -> DynamoDBCatalog:
    """Open ``dynamodb://TABLE``; ConfigError for bad settings, a missing table without
    ``create=True``, missing or refused credentials or an unreachable endpoint."""
    table_name, url_region = check_url(url)
    if unknown:
        raise ConfigError(f"unknown dynamodb options: {', '.join(sorted(unknown))}")
    if url_region is not None and region is not None and region != url_region:
        raise ConfigError(
            f"the catalog URL names region {url_region!r} and the region option {region!r}"
        )
    session, endpoint_url, chosen_region = await aws_session(
        endpoint_url=endpoint_url,
        endpoint_variable="AMBROSIA_DYNAMODB_ENDPOINT_URL",
        region=url_region or region,
    )
    config = AioConfig(
        connect_timeout=connect_timeout_s,
        read_timeout=request_timeout_s,
        # A catalog call fails fast and its caller decides: one attempt here.
        retries={"total_max_attempts": 1, "mode": "standard"},
    )
    stack = AsyncExitStack()
    client = await stack.enter_async_context(
        session.create_client(
            "dynamodb", region_name=chosen_region, endpoint_url=endpoint_url, config=config
        )
    )
    catalog = DynamoDBCatalog(
        client,
        stack,
        table_name,
        chosen_region,
        url_region=url_region,
        request_timeout_s=request_timeout_s,
        clock=clock,
    )
    try:
        await _probe_table(
            client, table_name, chosen_region, endpoint_url, create, connect_timeout_s
        )
    except BaseException:
        await catalog.close()
        raise
    return catalog


async def _probe_table(
    client: Any,
    table_name: str,
    region: str,
    endpoint_url: str | None,
    create: bool,
    timeout_s: float,
) -> None:
    """One read (a GetItem the deployment's role is granted anyway), so that a wrong
    setting fails fast and clearly, retried while DynamoDB does not answer (``probe``);
    with ``create``, a missing table is made."""
    where = f"table {table_name!r} in {region} at {endpoint_url or 'AWS DynamoDB'}"
    key = {PARTITION_KEY: {"S": "probe"}, SORT_KEY: {"S": "probe"}}

    async def check() -> None:
        try:
            with anyio.fail_after(timeout_s):
                await client.get_item(TableName=table_name, Key=key)
            return
        except TimeoutError as error:
            raise CatalogUnreachableError(
                f"cannot reach DynamoDB for {where}: timed out"
            ) from error
        except ClientError as error:
            code = _code(error)
            if code == "ResourceNotFoundException":
                if not create:
                    raise ConfigError(
                        f"{where} does not exist; create it (infra/terraform/aws does), "
                        "or pass create=True"
                    ) from error
            elif _status(error) in RETRIABLE_HTTP_STATUSES or code in _BUSY_CODES:
                raise CatalogUnreachableError(
                    f"cannot reach DynamoDB for {where}: {code or _status(error)}"
                ) from error
            else:
                raise ConfigError(str(_translate(error, where))) from error
        except (BotoConnectionError, HTTPClientError) as error:
            raise CatalogUnreachableError(f"cannot reach DynamoDB for {where}: {error}") from error
        except BotoCoreError as error:
            raise ConfigError(str(_translate(error, where))) from error
        await _create_table(client, table_name, where)

    await probe(check, timeout_s)


async def _create_table(client: Any, table_name: str, where: str) -> None:
    """Create the table and wait until it is ACTIVE (not retried: a creation is slow)."""
    try:
        with anyio.fail_after(table_active_wait_s):
            try:
                await client.create_table(
                    TableName=table_name,
                    AttributeDefinitions=[
                        {"AttributeName": PARTITION_KEY, "AttributeType": "S"},
                        {"AttributeName": SORT_KEY, "AttributeType": "S"},
                    ],
                    KeySchema=[
                        {"AttributeName": PARTITION_KEY, "KeyType": "HASH"},
                        {"AttributeName": SORT_KEY, "KeyType": "RANGE"},
                    ],
                    BillingMode="PAY_PER_REQUEST",
                )
            except ClientError as error:
                if _code(error) != "ResourceInUseException":
                    raise
            while True:
                described = await client.describe_table(TableName=table_name)
                if described["Table"]["TableStatus"] == "ACTIVE":
                    return
                await anyio.sleep(0.5)
    except TimeoutError as error:
        raise ConfigError(
            f"{where} was created but did not become ACTIVE within {table_active_wait_s:g} s"
        ) from error
    except (BotoConnectionError, HTTPClientError) as error:
        raise ConfigError(f"cannot reach DynamoDB for {where}: {error}") from error
    except (ClientError, BotoCoreError) as error:
        raise ConfigError(str(_translate(error, where))) from error
