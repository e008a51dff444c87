"""Storage damaged between runs: the start refuses, or recovers without losing a call.

Two real runtimes over TCP (``coordinator_peers``): a client makes calls that the server
logs and acknowledges, in two phases with a checkpoint between them, so the server's log
holds checkpoint 1 (its first calls in chunk 1) and checkpoint 2 (the rest in chunk 2).
Then both stop, the server's storage is damaged the way an operator or a failing disk
would (a deleted object, swapped files, a corrupt checkpoint), and the server starts
again:

- a deleted newest chunk, or two swapped chunk files, lost acknowledged calls: the start
  stops with an error naming the chunk, and ``ambrosia log`` (``describe_log``) raises
  the same error (one audit);
- a corrupt latest checkpoint: the start falls back to checkpoint 1 (the log from it is
  intact) and every acknowledged call is still there; with every kept checkpoint
  corrupt, the clear error;
- the log two SIGKILLs around a checkpoint used to leave (checkpoint N resuming in chunk
  N - 1, chunk N never created, a start that dies before its first checkpoint): every
  later start succeeds with every call intact.

On file, s3 (moto) and azblob (Azurite) where the damage applies to them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from coordinator_peers import ASYNC_EVERY, Peers, Recorder, Sender

from ambrosia.backends import open_store
from ambrosia.backends.base import LogStore
from ambrosia.binding.dispatcher import Dispatcher, in_process
from ambrosia.coordinator.recovery import recover
from ambrosia.coordinator.runtime import Config, Runtime
from ambrosia.errors import LogCorruptError, LogError, LogGapError
from ambrosia.inspect import describe_log
from ambrosia.protocol.checkpoint import decode_checkpoint, encode_checkpoint
from ambrosia.testing.emulators import Azurite, MotoServer
from ambrosia.testing.workloads import expected_chain

PHASE = 300  # calls per phase; the checkpoint between phases is taken on call PHASE + 1
CONFIG = Config(checkpoints_kept=2)
_NAME = re.compile(r"(?:^|/)(chunk|checkpoint)-(\d+)")


class Storage:
    """One backend's log location, and raw access to its objects (to damage them)."""

    def __init__(self, kind: str, url: str, options: dict[str, object]) -> None:
        self.kind = kind
        self.url = url
        self.options = options

    async def open(self, instance: str) -> LogStore:
        return await open_store(self.url, instance, **self.options)

    def _objects(self, instance: str, kind: str, number: int) -> list[str]:
        return [
            name
            for name in self.list_names(instance)
            if (match := _NAME.search(name))
            and match.groups() == (kind, str(number).zfill(len(match.group(2))))
        ]

    def list_names(self, instance: str) -> list[str]:
        raise NotImplementedError

    def delete(self, name: str) -> None:
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        raise NotImplementedError

    def write(self, name: str, data: bytes) -> None:
        raise NotImplementedError

    def delete_chunk(self, instance: str, number: int) -> None:
        names = self._objects(instance, "chunk", number)
        assert names, f"no chunk {number} in {self.list_names(instance)}"
        for name in names:
            self.delete(name)

    def corrupt_checkpoint(self, instance: str, number: int) -> None:
        (name,) = self._objects(instance, "checkpoint", number)
        data = bytearray(self.read(name))
        data[len(data) // 2] ^= 0x40
        self.write(name, bytes(data))


class FileStorage(Storage):
    def __init__(self, root: Path) -> None:
        super().__init__("file", root.as_uri(), {})
        self.root = root

    def list_names(self, instance: str) -> list[str]:
        return sorted(f"{instance}/{path.name}" for path in (self.root / instance).iterdir())

    def _path(self, name: str) -> Path:
        return self.root / name

    def delete(self, name: str) -> None:
        self._path(name).unlink()

    def read(self, name: str) -> bytes:
        return self._path(name).read_bytes()

    def write(self, name: str, data: bytes) -> None:
        self._path(name).write_bytes(data)

    def swap_chunks(self, instance: str, first: int, second: int) -> None:
        (a,) = self._objects(instance, "chunk", first)
        (b,) = self._objects(instance, "chunk", second)
        path_a, path_b = self._path(a), self._path(b)
        temporary = path_a.with_suffix(".swap")
        path_a.rename(temporary)
        path_b.rename(path_a)
        temporary.rename(path_b)


class S3Storage(Storage):
    def __init__(self, moto: MotoServer, prefix: str) -> None:
        super().__init__(
            "s3",
            f"s3://ambrosia-tests/{prefix}",
            {"endpoint_url": moto.endpoint_url, "create": True, "lease_duration_s": 15},
        )
        import botocore.session

        self.prefix = prefix
        self.client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=moto.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def list_names(self, instance: str) -> list[str]:
        listed = self.client.list_objects_v2(
            Bucket="ambrosia-tests", Prefix=f"{self.prefix}/{instance}/"
        )
        return sorted(str(item["Key"]) for item in listed.get("Contents", []))

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket="ambrosia-tests", Key=name)

    def read(self, name: str) -> bytes:
        body = self.client.get_object(Bucket="ambrosia-tests", Key=name)["Body"]
        data: bytes = body.read()
        return data

    def write(self, name: str, data: bytes) -> None:
        self.client.put_object(Bucket="ambrosia-tests", Key=name, Body=data)


class AzblobStorage(Storage):
    def __init__(self, azurite: Azurite, prefix: str) -> None:
        super().__init__(
            "azblob",
            f"azblob://ambrosia-tests/{prefix}",
            {
                "connection_string": azurite.connection_string,
                "create": True,
                "lease_duration_s": 15,
            },
        )
        from azure.storage.blob import ContainerClient

        self.prefix = prefix
        self.container = ContainerClient.from_connection_string(
            azurite.connection_string, "ambrosia-tests"
        )

    def list_names(self, instance: str) -> list[str]:
        listed = self.container.list_blobs(name_starts_with=f"{self.prefix}/{instance}/")
        return sorted(blob.name for blob in listed)

    def delete(self, name: str) -> None:
        from azure.storage.blob import BlobLeaseClient

        blob = self.container.get_blob_client(name)
        # The writer leases its chunks forever; an operator breaks the lease first.
        BlobLeaseClient(blob).break_lease(lease_break_period=0)
        blob.delete_blob()

    def read(self, name: str) -> bytes:
        return self.container.get_blob_client(name).download_blob().readall()

    def write(self, name: str, data: bytes) -> None:
        self.container.get_blob_client(name).upload_blob(data, overwrite=True)


@pytest.fixture
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    prefix = f"integrity-{uuid.uuid4().hex[:12]}"
    if request.param == "file":
        yield FileStorage(tmp_path / "log")
    elif request.param == "s3":
        request.getfixturevalue("s3_env")
        yield S3Storage(request.getfixturevalue("moto_server"), prefix)
    else:
        request.getfixturevalue("azblob_env")
        yield AzblobStorage(request.getfixturevalue("azurite"), prefix)


def backends(*kinds: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("storage", kinds, indirect=True)


# -- the workload ----------------------------------------------------------------------------


def apps(server: Runtime, client: Runtime) -> tuple[Recorder, Sender]:
    assert server.dispatcher is not None and client.dispatcher is not None
    recorder, sender = server.dispatcher.app, client.dispatcher.app
    assert isinstance(recorder, Recorder) and isinstance(sender, Sender)
    return recorder, sender


def awaited_through(total: int) -> list[int]:
    return [n for n in range(1, total + 1) if n % ASYNC_EVERY == 0]


async def wait_until(condition: Callable[[], bool], runtimes: tuple[Runtime, ...]) -> None:
    async with asyncio.timeout(30):
        while not condition():
            for runtime in runtimes:
                assert runtime.failure is None, f"{runtime.instance}: {runtime.failure}"
            await asyncio.sleep(0.005)


async def send(server: Runtime, client: Runtime, total: int, per_step: int) -> None:
    """Have the client call the server until ``total`` calls ran and their results came."""
    recorder, sender = apps(server, client)
    sender.this.begin.impulse("server", total, per_step)
    awaited = len(awaited_through(total))

    def done() -> bool:
        return recorder.count >= total and sender.results >= awaited

    await wait_until(done, (server, client))


def assert_exactly_once(server: Runtime, client: Runtime, total: int) -> None:
    recorder, sender = apps(server, client)
    assert recorder.out_of_order == []
    assert recorder.count == total
    assert recorder.chain == expected_chain(range(1, total + 1))
    assert sender.bad_results == []
    assert sender.result_chain == expected_chain(awaited_through(total))


async def two_phases(storage: Storage, peers: Peers) -> int:
    """Run both phases; returns how many calls the server acknowledged (and ran)."""
    server = await peers.start("server", Recorder, await storage.open("server"), CONFIG)
    client = await peers.start("client", Sender, await storage.open("client"), CONFIG)
    try:
        await send(server, client, PHASE, 10)
        # A checkpoint with nothing in flight: it resumes in the chunk it starts, and the
        # second phase fills that chunk.
        server._request_checkpoint()
        await send(server, client, PHASE + 1, 1)
        await wait_until(lambda: server.checkpoints[-1][0] == 2, (server, client))
        total = 2 * PHASE + 1
        await send(server, client, total, 10)
        assert_exactly_once(server, client, total)
    finally:
        await client.stop()
        await server.stop()
    return total


def server_runtime(store: LogStore, peers: Peers) -> Runtime:
    return Runtime(
        instance="server",
        binding=in_process(Recorder),
        store=store,
        listen=("127.0.0.1", 0),
        resolve=peers.resolve,
        config=CONFIG,
    )


async def start_refused(storage: Storage, peers: Peers) -> LogError:
    """Start the server on its damaged log: it must refuse; ``ambrosia log`` must agree."""
    runtime = server_runtime(await storage.open("server"), peers)
    try:
        with pytest.raises(LogError) as raised:
            await runtime.start()
    finally:
        await runtime.stop()
    with pytest.raises(LogError) as inspected:
        await describe_log(storage.url, "server")
    assert type(inspected.value) is type(raised.value)
    assert str(inspected.value).split("\n")[0] == str(raised.value)
    return raised.value


# -- a deleted newest chunk, swapped chunks --------------------------------------------------


@backends("file", "s3", "azblob")
def test_deleted_newest_chunk_is_refused_by_name(storage: Storage) -> None:
    async def scenario() -> None:
        peers = Peers()
        acknowledged = await two_phases(storage, peers)
        assert acknowledged == 2 * PHASE + 1
        storage.delete_chunk("server", 2)  # the second phase: PHASE calls acknowledged
        error = await start_refused(storage, peers)
        assert isinstance(error, LogGapError)
        assert re.match(r"server: chunk 2 is missing from ", str(error)), error

    asyncio.run(scenario())


@backends("file")
def test_swapped_chunk_files_are_refused_by_name(storage: Storage) -> None:
    assert isinstance(storage, FileStorage)

    async def scenario() -> None:
        peers = Peers()
        await two_phases(storage, peers)
        storage.swap_chunks("server", 1, 2)
        error = await start_refused(storage, peers)
        assert isinstance(error, LogGapError)
        assert "(chunk 2 offset 0) does not follow page" in str(error), error

    asyncio.run(scenario())


@backends("file")
def test_a_page_written_into_an_unrecorded_chunk_is_refused(storage: Storage) -> None:
    """A chunk beyond the recorded ones that holds pages (here: the newest chunk copied
    to the next number) was never written by this log."""
    assert isinstance(storage, FileStorage)

    async def scenario() -> None:
        peers = Peers()
        await two_phases(storage, peers)
        names = storage.list_names("server")
        newest = max(name for name in names if "/chunk-" in name)
        copy = storage.root / newest
        number = int(_NAME.search(newest).group(2))  # type: ignore[union-attr]
        target = copy.with_name(copy.name.replace(f"{number:08d}", f"{number + 1:08d}"))
        target.write_bytes(copy.read_bytes())
        error = await start_refused(storage, peers)
        assert isinstance(error, LogCorruptError)
        assert f"chunk {number + 1}" in error.where and "metadata records chunks" in error.reason

    asyncio.run(scenario())


# -- a corrupt latest checkpoint ------------------------------------------------------------


async def restart_both(storage: Storage, peers: Peers) -> tuple[Runtime, Runtime]:
    server = await peers.start("server", Recorder, await storage.open("server"), CONFIG)
    client = await peers.start("client", Sender, await storage.open("client"), CONFIG)
    return server, client


@backends("file", "s3", "azblob")
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        peers = Peers()
        total = await two_phases(storage, peers)
        storage.corrupt_checkpoint("server", 2)
        report = await describe_log(storage.url, "server")  # no error: recovery starts
        assert "recovery would load checkpoint 1 and replay " in report
        assert "checkpoint 2 cannot be used, recovery falls back past it" in report
        with caplog.at_level(logging.WARNING, logger="ambrosia.recovery"):
            server, client = await restart_both(storage, peers)
        try:
            fallback = [r.getMessage() for r in caplog.records if "FALLING BACK" in r.message]
            assert fallback and "from checkpoint 2 to the previous kept checkpoint 1" in fallback[0]
            assert server.replayed_pages > 0
            assert_exactly_once(server, client, total)  # every acknowledged call is there
            await send(server, client, total + 50, 10)  # and the pair carries on
            assert_exactly_once(server, client, total + 50)
        finally:
            await client.stop()
            await server.stop()

    asyncio.run(scenario())


@backends("file")
def test_no_usable_checkpoint_is_the_clear_error(storage: Storage) -> None:
    async def scenario() -> None:
        peers = Peers()
        await two_phases(storage, peers)
        storage.corrupt_checkpoint("server", 2)
        storage.corrupt_checkpoint("server", 1)
        error = await start_refused(storage, peers)
        assert isinstance(error, LogCorruptError)
        assert "checkpoint 2" in error.where and "checkpoint checksum mismatch" in str(error)
        assert "no older kept checkpoint can be used either (checkpoint 1: " in str(error)

    asyncio.run(scenario())


# -- two kills around a checkpoint ---------------------------------------------------------


async def checkpoint_resuming_in_the_previous_chunk(storage: Storage) -> int:
    """Put the server's log in the state a kill right after "checkpoint N written" leaves
    when checkpoint N resumes in chunk N - 1 and no page reached chunk N: the latest
    checkpoint (resuming in the newest chunk, K) is written again as checkpoint K + 1,
    still resuming in chunk K, and the metadata points at it. Returns K + 1."""
    store = await storage.open("server")
    try:
        lease = await store.acquire_lease(wait_s=20)
        meta, version = await store.read_meta()
        assert meta is not None and meta.checkpoint is not None
        latest = meta.checkpoint
        where = f"checkpoint {latest}"
        state = decode_checkpoint(await store.read_checkpoint(latest), where)
        newest = max(chunk.number for chunk in await store.list_chunks())
        assert state.resume_chunk == newest == latest, (state.resume_chunk, newest, latest)
        number = latest + 1
        state.number = number
        await store.write_checkpoint(lease, number, encode_checkpoint(state))
        await store.swap_meta(
            lease, expected=version, new=dataclasses.replace(meta, checkpoint=number)
        )
        await store.release_lease(lease)
    finally:
        await store.close()
    return number


@backends("file", "s3")
def test_two_kills_around_a_checkpoint_leave_a_log_that_starts(storage: Storage) -> None:
    async def scenario() -> None:
        peers = Peers()
        total = await two_phases(storage, peers)
        await checkpoint_resuming_in_the_previous_chunk(storage)
        # The next life replays, creates its chunk and dies before its first checkpoint
        # (no input arrives, so it never takes one).
        second = server_runtime(await storage.open("server"), peers)
        await second.start()
        await asyncio.wait_for(second.primary.wait(), 10)
        assert second.checkpoints[-1][0] == 3 and second.failure is None
        await second.stop()
        # Every later start works, and nothing acknowledged is lost.
        server, client = await restart_both(storage, peers)
        try:
            assert_exactly_once(server, client, total)
            await send(server, client, total + 50, 10)
            assert_exactly_once(server, client, total + 50)
        finally:
            await client.stop()
            await server.stop()
        await describe_log(storage.url, "server")  # the audit agrees: no problem

    asyncio.run(scenario())


# -- a first start killed between checkpoint 0 and the metadata ------------------------------


@backends("file", "s3")
def test_first_start_killed_before_its_metadata_starts_again(storage: Storage) -> None:
    """A first life that wrote checkpoint 0 and died before pointing the metadata at it
    (the window a SIGKILL hit in the s3 crash test): the next start adopts that checkpoint
    (checkpoints are create-only, so writing its own would be refused for good)."""

    async def scenario() -> None:
        peers = Peers()
        store = await storage.open("server")
        try:
            lease = await store.acquire_lease(wait_s=20)
            # What the dead life wrote: its fresh state, under its own epoch.
            first = server_runtime(store, peers)
            first.lease = lease
            first.dispatcher = Dispatcher("server", Recorder(), first._open_stream, print)
            state = first._snapshot(
                first.dispatcher._state(), number=0, resume_sequence=0, resume_chunk=0
            )
            await store.write_checkpoint(lease, 0, encode_checkpoint(state))
            meta, _ = await store.read_meta()
            assert meta is None or meta.checkpoint is None
            await store.release_lease(lease)
        finally:
            await store.close()
        server = await peers.start("server", Recorder, await storage.open("server"), CONFIG)
        client = await peers.start("client", Sender, await storage.open("client"), CONFIG)
        try:
            await send(server, client, 40, 10)
            assert_exactly_once(server, client, 40)
        finally:
            await client.stop()
            await server.stop()
        server, client = await restart_both(storage, peers)
        try:
            assert_exactly_once(server, client, 40)
        finally:
            await client.stop()
            await server.stop()
        await describe_log(storage.url, "server")

    asyncio.run(scenario())


# -- a reader beside a live writer -----------------------------------------------------------


@backends("file")
def test_the_audit_of_a_live_log_is_not_fooled_by_chunk_switches(storage: Storage) -> None:
    """``ambrosia log`` and replay checks read a log whose writer runs: a chunk switch or a
    retention swap between the reader's metadata read and its chunk listing must not look
    like damage (the forwarder example on s3 saw "chunk 1 holds 47 bytes but the metadata
    records chunks 0..0")."""

    async def scenario() -> None:
        peers = Peers()
        small = dataclasses.replace(CONFIG, checkpoint_log_bytes=2048)
        server = await peers.start("server", Recorder, await storage.open("server"), small)
        client = await peers.start("client", Sender, await storage.open("client"), small)
        reads = 0
        try:
            sending = asyncio.create_task(send(server, client, 1500, 1))
            while not sending.done():
                reader = await storage.open("server")
                try:
                    await recover(reader, CONFIG.page_bytes_max)
                finally:
                    await reader.close()
                reads += 1
            await sending
            assert server.checkpoints[-1][0] > 5, server.checkpoints  # many switches seen
            assert reads > 5
        finally:
            await client.stop()
            await server.stop()

    asyncio.run(scenario())
