"""The cloud log stores on real emulators: Azure Blob on Azurite, S3 on a moto server."""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import anyio
import pytest

from ambrosia.backends import azblob, open_store
from ambrosia.backends.base import Lease, LogStore
from ambrosia.backends.faults import FaultInjectingStore, FaultRates
from ambrosia.backends.retry import PROBE_ATTEMPTS, RetryPolicy, RetryStats, call_with_retry
from ambrosia.errors import (
    ConfigError,
    LeaseHeldError,
    LeaseLostError,
    NotFoundError,
    StorageUnavailableError,
)
from ambrosia.testing.conformance import CONFORMANCE_CHECKS, Check
from ambrosia.testing.emulators import (
    AZURITE_ACCOUNT_KEY,
    AZURITE_ACCOUNT_NAME,
    Azurite,
    MotoServer,
    free_loopback_ports,
)
from tests.stalling import StallingForwarder

pytestmark = pytest.mark.emulator

StoreFactory = Callable[[str], Awaitable[LogStore]]
_T = TypeVar("_T")
BACKENDS = ["azblob", "s3"]
FAST_RETRIES = RetryPolicy(
    attempts_max=12, delay_initial_s=0.001, delay_max_s=0.02, total_s_max=10.0
)


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # moto accepts any credentials; they must exist for the credential chain to pass.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture(params=BACKENDS)
def make_store(request: pytest.FixtureRequest, aws_credentials: None) -> Iterator[StoreFactory]:
    options: dict[str, object]
    if request.param == "azblob":
        emulator: Azurite = request.getfixturevalue("azurite")
        url = "azblob://ambrosia-tests/logs"
        options = {"connection_string": emulator.connection_string, "lease_duration_s": 15}
    else:
        server: MotoServer = request.getfixturevalue("moto_server")
        url = "s3://ambrosia-tests/logs"
        options = {"endpoint_url": server.endpoint_url, "lease_duration_s": 15}

    async def factory(instance: str) -> LogStore:
        return await open_store(url, instance, create=True, **options)

    yield factory


@pytest.mark.parametrize(
    ("name", "check"), CONFORMANCE_CHECKS, ids=[name for name, _ in CONFORMANCE_CHECKS]
)
def test_conformance(name: str, check: Check, make_store: StoreFactory) -> None:
    anyio.run(check, make_store)


def test_page_appends_under_faults_keep_every_page_exactly_once(make_store: StoreFactory) -> None:
    """Timeouts, 503s, throttling and ambiguous writes: retries bounded, no page lost or doubled."""
    page_count = 80
    pages = [f"page {index:04d} ".encode() * (1 + index % 7) for index in range(page_count)]
    rates = FaultRates(timeout=0.1, unavailable=0.05, throttled=0.05, ambiguous_write=0.2)
    stats = RetryStats()

    async def main() -> None:
        async with AsyncExitStack() as stack:
            inner = await make_store(f"faults-{uuid.uuid4().hex[:8]}")
            stack.push_async_callback(inner.close)
            faulty = FaultInjectingStore(inner, seed=1234, rates=rates)

            async def retried(operation: Callable[[], Awaitable[object]]) -> object:
                return await call_with_retry(operation, FAST_RETRIES, stats=stats)

            lease = await inner.acquire_lease()
            await retried(lambda: faulty.create_chunk(lease, 0))
            offset = 0
            for page in pages:
                await retried(
                    lambda page=page, offset=offset: faulty.append(
                        lease, 0, expected_offset=offset, data=page
                    )
                )
                offset += len(page)
            await retried(lambda: faulty.write_checkpoint(lease, 1, b"state after the pages"))
            assert await inner.read_chunk(0) == b"".join(pages)
            assert [(chunk.number, chunk.size_bytes) for chunk in await inner.list_chunks()] == [
                (0, offset)
            ]
            assert await inner.read_checkpoint(1) == b"state after the pages"
            counts = faulty.counts
            assert counts.ambiguous_writes > 0 and counts.timeouts > 0
            assert counts.unavailable > 0 and counts.throttled > 0
            assert stats.retries == counts.injected
            assert stats.gave_up == 0
            assert stats.attempts_per_call_max <= FAST_RETRIES.attempts_max
            assert max(stats.delays_s) <= FAST_RETRIES.delay_max_s

    anyio.run(main)


def test_requests_that_land_but_report_a_timeout_are_finished_by_the_callers_retry(
    make_store: StoreFactory,
) -> None:
    """The store makes one attempt per request; its caller retries whole operations.

    Here one request in five lands and then reports a timeout, inside every operation
    (a lease takeover's fencing, a renewal's lock rewrite, a chunk's creation, an append,
    a checkpoint). Each retried operation must finish what the lost reply left: the
    acquisition without waiting out its own lease, the renewal without losing it.
    """
    chooser = random.Random(20240611)
    pages = [f"page {index:03d} ".encode() * (1 + index % 5) for index in range(30)]
    stats = RetryStats()

    async def main() -> None:
        async with AsyncExitStack() as stack:
            instance = f"lost-replies-{uuid.uuid4().hex[:8]}"
            first = await make_store(instance)
            stack.push_async_callback(first.close)
            # A previous writer's chunk: the takeover has a chunk to fence.
            old = await first.acquire_lease()
            await first.create_chunk(old, 0)
            await first.append(old, 0, expected_offset=0, data=b"old")
            store = await make_store(instance)
            stack.push_async_callback(store.close)
            plain_call = store._call  # type: ignore[attr-defined]
            lost_replies = 0

            async def lands_then_times_out(where: str, operation: Any) -> Any:
                nonlocal lost_replies
                result = await plain_call(where, operation)
                if chooser.random() < 0.2:
                    lost_replies += 1
                    raise StorageUnavailableError(f"{where}: timed out after it landed")
                return result

            async def retried(operation: Callable[[], Awaitable[_T]]) -> _T:
                return await call_with_retry(operation, FAST_RETRIES, stats=stats)

            await first.release_lease(old)
            store._call = lands_then_times_out  # type: ignore[attr-defined]
            lease = await retried(lambda: store.acquire_lease(wait_s=0.0))
            assert lease.epoch > old.epoch
            await retried(lambda: store.create_chunk(lease, 1))
            offset = 0
            for page in pages:
                await retried(
                    lambda page=page, offset=offset: store.append(
                        lease, 1, expected_offset=offset, data=page
                    )
                )
                offset += len(page)
                renewed = await retried(lambda: store.renew_lease(lease))
                assert renewed == lease
            await retried(lambda: store.write_checkpoint(lease, 2, b"state"))
            store._call = plain_call  # type: ignore[attr-defined]
            assert lost_replies >= 5
            assert stats.gave_up == 0
            assert await store.read_chunk(1) == b"".join(pages)
            assert await store.read_chunk(0) == b"old"
            assert await store.read_checkpoint(2) == b"state"
            # The lease survived every renewal whose reply was lost: still ours to use.
            await store.append(lease, 1, expected_offset=offset, data=b"end")
            await store.release_lease(lease)

    anyio.run(main)


def test_two_writers_at_once_exactly_one_holds_the_lease(make_store: StoreFactory) -> None:
    instance = f"two-writers-{uuid.uuid4().hex[:8]}"
    outcomes: dict[int, Lease | LeaseHeldError] = {}

    async def main() -> None:
        async with AsyncExitStack() as stack:
            stores = [await make_store(instance) for _ in range(2)]
            for store in stores:
                stack.push_async_callback(store.close)

            async def contend(index: int) -> None:
                try:
                    outcomes[index] = await stores[index].acquire_lease(wait_s=0.0)
                except LeaseHeldError as error:
                    outcomes[index] = error

            async with anyio.create_task_group() as tasks:
                for index in range(2):
                    tasks.start_soon(contend, index)
            winners = [index for index, outcome in outcomes.items() if isinstance(outcome, Lease)]
            assert len(winners) == 1, outcomes
            winner = winners[0]
            loser = 1 - winner
            lease = outcomes[winner]
            assert isinstance(lease, Lease)
            await stores[winner].create_chunk(lease, 0)
            await stores[winner].append(lease, 0, expected_offset=0, data=b"from the winner")
            # The loser cannot write with the winner's lease: it is not its own.
            with pytest.raises(LeaseLostError):
                await stores[loser].append(lease, 0, expected_offset=15, data=b"x")
            assert await stores[loser].read_chunk(0) == b"from the winner"

    anyio.run(main)


def test_large_page_spans_append_blocks_and_is_never_duplicated(azurite: Azurite) -> None:
    data = os.urandom(azblob.append_block_bytes_max * 2 + 12345)

    async def main() -> None:
        store = await open_store(
            "azblob://ambrosia-tests/large",
            f"large-{uuid.uuid4().hex[:8]}",
            create=True,
            connection_string=azurite.connection_string,
        )
        try:
            lease = await store.acquire_lease()
            await store.create_chunk(lease, 0)
            await store.append(lease, 0, expected_offset=0, data=b"head")
            await store.append(lease, 0, expected_offset=4, data=data)
            # The exact retry of a multi-block append finds every block in place.
            await store.append(lease, 0, expected_offset=4, data=data)
            assert await store.read_chunk(0) == b"head" + data
        finally:
            await store.close()

    anyio.run(main)


# -- configuration errors, before anything starts --------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "azblob://UPPER/prefix",
        "azblob://ab/prefix",
        "azblob://bad--name/prefix",
        "azblob://user:secret@container/prefix",
        "azblob://container:10000/prefix",
        "azblob://container/prefix?sig=x",
        "azblob://container/a//b",
        "s3://Bucket/prefix",
        "s3://b/prefix",
        "s3://bucket_name/prefix",
        "s3://bucket/prefix#fragment",
        "s3://bucket/../up",
    ],
)
def test_malformed_urls_are_config_errors(url: str, aws_credentials: None) -> None:
    async def main() -> None:
        with pytest.raises(ConfigError, match="malformed"):
            await open_store(url, "instance", connection_string="UseDevelopmentStorage=true")

    anyio.run(main)


def test_unknown_option_is_a_config_error(azurite: Azurite) -> None:
    async def main() -> None:
        with pytest.raises(ConfigError, match="unknown azblob options: colour"):
            await open_store(
                "azblob://ambrosia-tests/p",
                "i",
                connection_string=azurite.connection_string,
                colour="blue",
            )

    anyio.run(main)


def test_missing_container_or_bucket_without_create(
    azurite: Azurite, moto_server: MotoServer, aws_credentials: None
) -> None:
    async def main() -> None:
        with pytest.raises(ConfigError, match=r"does not exist.*create=True"):
            await open_store(
                "azblob://never-created/p", "i", connection_string=azurite.connection_string
            )
        with pytest.raises(ConfigError, match=r"does not exist.*create=True"):
            await open_store("s3://never-created/p", "i", endpoint_url=moto_server.endpoint_url)
        # The same with create=True works, and leaves the container/bucket for the next open.
        for url, options in [
            ("azblob://created-on-demand/p", {"connection_string": azurite.connection_string}),
            ("s3://created-on-demand/p", {"endpoint_url": moto_server.endpoint_url}),
        ]:
            store = await open_store(url, "i", create=True, **options)
            await store.close()
            store = await open_store(url, "i", **options)
            await store.close()

    anyio.run(main)


def test_unreachable_endpoint_is_a_config_error_without_hanging(aws_credentials: None) -> None:
    (port,) = free_loopback_ports(1)  # nothing listens there
    connection_string = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
    )

    async def main() -> None:
        with anyio.fail_after(10):
            with pytest.raises(ConfigError, match="cannot reach Azure Blob"):
                await open_store(
                    "azblob://container/p",
                    "i",
                    connection_string=connection_string,
                    connect_timeout_s=2.0,
                )
            with pytest.raises(ConfigError, match="cannot reach S3"):
                await open_store(
                    "s3://bucket/p",
                    "i",
                    endpoint_url=f"http://127.0.0.1:{port}",
                    connect_timeout_s=2.0,
                )

    anyio.run(main)


def _open_through(backend: str, port: int, **options: Any) -> Awaitable[LogStore]:
    if backend == "azblob":
        connection_string = (
            "DefaultEndpointsProtocol=http;"
            f"AccountName={AZURITE_ACCOUNT_NAME};AccountKey={AZURITE_ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT_NAME};"
        )
        return open_store(
            "azblob://probe-retried/p", "i", connection_string=connection_string, **options
        )
    return open_store(
        "s3://probe-retried/p", "i", endpoint_url=f"http://127.0.0.1:{port}", **options
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_probe_at_open_outlasts_a_request_the_service_does_not_answer(
    backend: str, azurite: Azurite, moto_server: MotoServer, aws_credentials: None
) -> None:
    """A store that opens through a service too busy to answer one request still opens.

    Seen in a full test run: Azurite answered nothing for 5 s, and replaying a log failed
    with "cannot reach Azure Blob storage ... timed out" although the log was intact.
    """
    emulator_port = azurite.blob_port if backend == "azblob" else moto_server.port

    async def main() -> None:
        async with StallingForwarder(emulator_port, stalled=1).running() as busy:
            started = time.monotonic()
            store = await _open_through(backend, busy.port, create=True, connect_timeout_s=1.0)
            await store.close()
            assert busy.connections >= 2
            assert time.monotonic() - started >= 1.0
        # A service that never answers is still a ConfigError, after PROBE_ATTEMPTS tries
        # and within their bound: attempts x (timeout + the longest backoff).
        async with StallingForwarder(emulator_port, stalled=1_000).running() as dead:
            started = time.monotonic()
            with pytest.raises(ConfigError, match=rf"cannot reach .*\({PROBE_ATTEMPTS} attempts\)"):
                await _open_through(backend, dead.port, connect_timeout_s=1.0)
            assert dead.connections == PROBE_ATTEMPTS
            assert time.monotonic() - started <= PROBE_ATTEMPTS * (1.0 + 1.0) + 1.0

    anyio.run(main)


def test_missing_credentials_are_config_errors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object, moto_server: MotoServer
) -> None:
    for variable in (
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_ACCOUNT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
    ):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    async def main() -> None:
        with pytest.raises(ConfigError, match="AZURE_STORAGE_CONNECTION_STRING"):
            await open_store("azblob://container/p", "i")
        with pytest.raises(ConfigError, match="no AWS credentials"):
            await open_store("s3://bucket/p", "i", endpoint_url=moto_server.endpoint_url)

    anyio.run(main)


def test_endpoint_from_environment(
    monkeypatch: pytest.MonkeyPatch,
    azurite: Azurite,
    moto_server: MotoServer,
    aws_credentials: None,
) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    monkeypatch.setenv("AMBROSIA_S3_ENDPOINT_URL", moto_server.endpoint_url)

    async def main() -> None:
        for url in ("azblob://from-env/p", "s3://from-env/p"):
            store = await open_store(url, "i", create=True)
            try:
                assert store.url == url
                assert await store.list_chunks() == []
            finally:
                await store.close()

    anyio.run(main)


def test_s3_tail_reads_what_was_appended_and_stops_at_a_fence(
    moto_server: MotoServer, aws_credentials: None
) -> None:
    """``read_chunk_tail`` (a standby's read): the objects after an offset, none past a
    fence, NotFoundError for a chunk that does not exist."""

    async def check() -> None:
        url = f"s3://ambrosia-tests/tail-{uuid.uuid4().hex[:8]}"
        options = {"endpoint_url": moto_server.endpoint_url, "lease_duration_s": 1}
        writer = await open_store(url, "tail", create=True, **options)
        reader = await open_store(url, "tail", **options)
        try:
            tail = reader.read_chunk_tail  # type: ignore[attr-defined]
            with pytest.raises(NotFoundError):
                await tail(0, 0)
            lease = await writer.acquire_lease()
            await writer.create_chunk(lease, 0)
            assert await tail(0, 0) == b""  # only the creator's fence
            await writer.append(lease, 0, expected_offset=0, data=b"one")
            await writer.append(lease, 0, expected_offset=3, data=b"two!")
            assert await tail(0, 0) == b"onetwo!"
            assert await tail(0, 3) == b"two!"
            assert await tail(0, 7) == b""
            # A takeover fences the end: the tail stops there, as the old writer must.
            await reader.acquire_lease(wait_s=10)
            assert await tail(0, 7) == b""
            assert await tail(0, 0) == b"onetwo!"
        finally:
            await writer.close()
            await reader.close()

    anyio.run(check)
