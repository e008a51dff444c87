"""The counter on AWS storage only: the catalog in DynamoDB, the logs on S3 (a moto server).

What an EKS deployment does, as processes: the table exists (Terraform made it), each
instance is registered with ``ambrosia register`` into ``dynamodb://TABLE``, and each
``ambrosia run`` finds its own record and its peer's address there, with no file shared
between them. The client starts first, so its call waits while it looks the server up;
the server is killed once after it answered and its successor recovers from the S3 log.
The output is still 1 and 2, and the catalog read back holds both registrations.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
import pytest

from ambrosia.catalog import InstanceRecord, open_catalog
from ambrosia.testing.emulators import MotoServer
from ambrosia.testing.harness import Deployment

pytestmark = [pytest.mark.crash, pytest.mark.emulator]

LEASE_DURATION_S = 2
LIVENESS_S = 60.0


def _printed(deployment: Deployment, name: str) -> list[str]:
    return [line for line in deployment.outputs(name).splitlines() if line.strip().isdigit()]


def test_counter_with_a_dynamodb_catalog_and_s3_logs(
    tmp_path: Path, dynamodb_env: MotoServer, example_env: dict[str, str]
) -> None:
    catalog_url = f"dynamodb://ambrosia-{uuid.uuid4().hex[:12]}?region=us-east-1"

    async def create_table() -> None:
        catalog = await open_catalog(catalog_url, create=True)
        await catalog.close()

    anyio.run(create_table)
    deployment = Deployment(
        tmp_path,
        log_url=f"s3://ambrosia-examples/counter-{uuid.uuid4().hex[:12]}",
        catalog_url=catalog_url,
        env=example_env,
        run_args=(
            "--create-storage",
            "--store-option",
            f"lease_duration_s={LEASE_DURATION_S}",
            "--lease-wait-s",
            "60",
        ),
    )
    deployment.register("server", "examples.counter.app:Counter")
    deployment.register("client", "examples.counter.app:Client")
    listing = deployment.cli("list")
    assert "server" in listing and "client" in listing, listing
    try:
        deployment.start("client")
        deployment.wait_for(
            lambda: "client: primary (" in deployment.output("client"),
            LIVENESS_S,
            "the client to be primary",
        )
        deployment.start("server")
        deployment.wait_for(
            lambda: _printed(deployment, "client") == ["1", "2"],
            LIVENESS_S,
            "the client to print 1 and 2",
        )
        deployment.kill("server")
        deployment.start("server")
        deployment.wait_for(
            lambda: "server: primary (" in deployment.output("server"),
            LEASE_DURATION_S + LIVENESS_S,
            "the restarted server to be primary",
        )
        for name in ("client", "server"):
            assert deployment.terminate(name) == 0, deployment.output(name)
    finally:
        deployment.stop_all()
    assert _printed(deployment, "client") == ["1", "2"]
    assert deployment.log_findings() == []

    async def read_back() -> list[InstanceRecord]:
        catalog = await open_catalog(catalog_url)
        try:
            return await catalog.list()
        finally:
            await catalog.close()

    records = anyio.run(read_back)
    assert [record.name for record in records] == ["client", "server"]
    assert {record.log_url for record in records} == {deployment.log_url}
    assert [record.app for record in records] == [
        "examples.counter.app:Client",
        "examples.counter.app:Counter",
    ]
