"""The DynamoDB catalog on a moto server: its URL, its settings, and its conditional writes.

The semantics shared with the other catalogs are in test_conformance.py. Here: what is
particular to DynamoDB (the URL's region, the table layout the Terraform module creates,
the errors for a missing table, missing credentials and an unreachable endpoint), and
the races made deterministic: another writer changes the row between a catalog's read
and its conditional write, through a second client on the same server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest

from ambrosia.catalog import InstanceRecord, check_catalog_url, open_catalog
from ambrosia.catalog.dynamodb import DynamoDBCatalog, _item
from ambrosia.errors import (
    CatalogError,
    ConfigError,
    InstanceNotFoundError,
    RegistrationConflictError,
)
from ambrosia.testing.emulators import MotoServer, free_loopback_ports

pytestmark = pytest.mark.emulator


@pytest.fixture
def moto(dynamodb_env: MotoServer) -> Iterator[MotoServer]:
    yield dynamodb_env


def _table() -> str:
    return f"catalog-{uuid.uuid4().hex[:12]}"


def _client(moto: MotoServer) -> Any:
    import boto3

    return boto3.client("dynamodb", endpoint_url=moto.endpoint_url, region_name="us-east-1")


def _record(name: str, port: int = 7000, **changes: object) -> InstanceRecord:
    settings: dict[str, object] = {
        "name": name,
        "address": f"127.0.0.1:{port}",
        "log_url": f"s3://logs/{name}",
        "app": "examples.counter:Counter",
    }
    settings.update(changes)
    return InstanceRecord(**settings)  # type: ignore[arg-type]


async def _open(table: str, **options: object) -> DynamoDBCatalog:
    catalog = await open_catalog(f"dynamodb://{table}", **options)
    assert isinstance(catalog, DynamoDBCatalog)
    return catalog


@pytest.mark.parametrize(
    ("url", "table", "region"),
    [
        ("dynamodb://ambrosia", "ambrosia", None),
        ("dynamodb://prod.Ambrosia_catalog-1/", "prod.Ambrosia_catalog-1", None),
        ("dynamodb://ambrosia?region=eu-west-1", "ambrosia", "eu-west-1"),
        ("dynamodb://ambrosia?region=us-gov-west-1", "ambrosia", "us-gov-west-1"),
    ],
)
def test_well_formed_urls(url: str, table: str, region: str | None) -> None:
    from ambrosia.catalog.dynamodb import check_url

    assert check_url(check_catalog_url(url)) == (table, region)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("dynamodb://", "3 to 255"),
        ("dynamodb://ab", "3 to 255"),
        ("dynamodb://table/extra", "3 to 255"),
        ("dynamodb://user@table", "3 to 255"),
        ("dynamodb://table:8000", "3 to 255"),
        ("dynamodb://table#x", "3 to 255"),
        ("dynamodb://table?region=Europe", "not an AWS region"),
        ("dynamodb://table?region=", "not an AWS region"),
        ("dynamodb://table?endpoint=http://x", "only query parameter is region"),
        ("dynamodb://table?region=eu-west-1&region=eu-west-2", "only query parameter"),
        ("dynamodb://table?aws_secret_access_key=x", "never from the URL"),
    ],
)
def test_malformed_urls_are_refused_without_io(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match="malformed catalog URL") as caught:
        check_catalog_url(url)
    assert fragment in str(caught.value)


def test_table_layout_is_the_one_terraform_creates(moto: MotoServer) -> None:
    """Keys kind/name, the record's fields as attributes, a revision renewed per write."""
    table = _table()
    client = _client(moto)

    async def main() -> None:
        catalog = await _open(table, create=True)
        try:
            await catalog.register(_record("server", 7000, app=None))
            first = client.get_item(
                TableName=table, Key={"kind": {"S": "instance"}, "name": {"S": "server"}}
            )["Item"]
            await catalog.register(_record("server", 7001, app=None), replace=True)
            second = client.get_item(
                TableName=table, Key={"kind": {"S": "instance"}, "name": {"S": "server"}}
            )["Item"]
        finally:
            await catalog.close()
        assert set(first) == {
            "kind",
            "name",
            "address",
            "log_url",
            "current_version",
            "upgrade_version",
            "replicas",
            "receive_port",
            "send_port",
            "created",
            "updated",
            "revision",
        }
        assert first["replicas"] == {"N": "1"} and first["address"] == {"S": "127.0.0.1:7000"}
        assert second["revision"] != first["revision"]
        assert second["created"] == first["created"]

    anyio.run(main)
    description = client.describe_table(TableName=table)["Table"]
    assert description["KeySchema"] == [
        {"AttributeName": "kind", "KeyType": "HASH"},
        {"AttributeName": "name", "KeyType": "RANGE"},
    ]
    assert description["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"


def test_a_registration_that_loses_the_race_sees_the_winner(moto: MotoServer) -> None:
    """Another writer creates the row between our read (none) and our conditional put."""
    table = _table()
    client = _client(moto)
    theirs = _record("contested", 7100).with_timestamps(created="t0", updated="t0")
    interfered: list[str] = []

    def clock() -> str:
        # Called after the catalog read the row and before it writes: the other writer's turn.
        if not interfered:
            client.put_item(TableName=table, Item=_item(theirs, "theirs"))
            interfered.append("put")
        return "t1"

    async def main() -> None:
        catalog = await _open(table, create=True, clock=clock)
        try:
            with pytest.raises(RegistrationConflictError, match="address"):
                await catalog.register(_record("contested", 7000))
            assert await catalog.get("contested") == theirs
            # With replace, the loser reads again and replaces what it now sees.
            replaced = await catalog.register(_record("contested", 7000), replace=True)
            assert replaced.created == "t0" and replaced.updated == "t1"
        finally:
            await catalog.close()

    anyio.run(main)
    assert interfered == ["put"]


def test_a_replacement_based_on_a_stale_read_is_not_written(moto: MotoServer) -> None:
    """Another writer replaces the row between our read and our write: we read again."""
    table = _table()
    client = _client(moto)
    reads: list[str] = []

    async def main() -> None:
        catalog = await _open(table, create=True)
        try:
            original = await catalog.register(_record("server", 7000))
            theirs = _record("server", 7200, replicas=2).with_timestamps(
                created=original.created, updated="later"
            )
            read = catalog._read

            async def read_then_interfere(name: str) -> tuple[InstanceRecord, str] | None:
                found = await read(name)
                reads.append("read")
                if len(reads) == 1:
                    client.put_item(TableName=table, Item=_item(theirs, uuid.uuid4().hex))
                return found

            catalog._read = read_then_interfere  # type: ignore[method-assign]
            # Same settings as the row we read; not the same as the row now stored.
            assert await catalog.register(_record("server", 7000)) == original
            assert len(reads) == 1  # nothing was written, nothing to retry
            # A replacement from the stale read fails its condition and is decided again.
            reads.clear()
            mine = await catalog.register(_record("server", 7300), replace=True)
            assert len(reads) == 2
            assert await catalog.get("server") == mine
            # A removal based on a stale read likewise reads again before it deletes.
            reads.clear()
            await catalog.remove("server")
            assert len(reads) == 2
            with pytest.raises(InstanceNotFoundError):
                await catalog.get("server")
        finally:
            await catalog.close()

    anyio.run(main)


def test_invalid_items_are_catalog_errors(moto: MotoServer) -> None:
    table = _table()
    client = _client(moto)

    async def main() -> None:
        catalog = await _open(table, create=True)
        try:
            client.put_item(
                TableName=table,
                Item={"kind": {"S": "instance"}, "name": {"S": "broken"}, "address": {"S": "x"}},
            )
            with pytest.raises(CatalogError, match="'broken' is invalid"):
                await catalog.get("broken")
            with pytest.raises(CatalogError, match="'broken' is invalid"):
                await catalog.list()
            with pytest.raises(ConfigError, match="invalid instance name"):
                await catalog.get("no/slashes")
        finally:
            await catalog.close()

    anyio.run(main)


def test_missing_table_options_credentials_and_endpoint(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        with pytest.raises(ConfigError, match=r"does not exist.*create=True"):
            await _open(_table())
        with pytest.raises(ConfigError, match="unknown dynamodb options: colour"):
            await _open(_table(), colour="blue")
        with pytest.raises(ConfigError, match="names region 'eu-west-1' and the region option"):
            await open_catalog(f"dynamodb://{_table()}?region=eu-west-1", region="eu-west-2")
        # A table is per region: the URL's region is the one used.
        table = _table()
        catalog = await _open(table, create=True)
        await catalog.close()
        with pytest.raises(ConfigError, match=r"in eu-west-1 .*does not exist"):
            await open_catalog(f"dynamodb://{table}?region=eu-west-1")
        (closed_port,) = free_loopback_ports(1)
        with pytest.raises(ConfigError, match="cannot reach DynamoDB"):
            await _open(_table(), endpoint_url=f"http://127.0.0.1:{closed_port}")

    anyio.run(main)
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(variable)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")

    async def without_credentials() -> None:
        with pytest.raises(ConfigError, match="no AWS credentials"):
            await _open(_table())

    anyio.run(without_credentials)


def test_url_of_an_open_catalog_keeps_its_region(moto: MotoServer) -> None:
    table = _table()

    async def main() -> None:
        catalog = await open_catalog(f"dynamodb://{table}?region=eu-west-1", create=True)
        try:
            assert catalog.url == f"dynamodb://{table}?region=eu-west-1"
            assert isinstance(catalog, DynamoDBCatalog) and catalog.region == "eu-west-1"
            assert urlsplit(catalog.url).netloc == table
        finally:
            await catalog.close()

    anyio.run(main)
