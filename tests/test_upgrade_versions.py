"""The version plumbing of live upgrades, without processes: what a class declares, the
version the log's metadata records and when, the catalog brought up to the log, and how
``ambrosia status`` shows them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ambrosia.backends import open_store
from ambrosia.backends.base import ChunkRange, Meta
from ambrosia.binding.dispatcher import in_process
from ambrosia.binding.immortal import Immortal
from ambrosia.catalog import InstanceRecord, open_catalog
from ambrosia.coordinator.metadata import MetadataKeeper
from ambrosia.errors import ConfigError
from ambrosia.status import read_status, render_status
from ambrosia.upgrade import (
    LOG_APP_FIELD,
    LOG_VERSION_FIELD,
    NewerVersionError,
    VersionedRuntime,
    check_version,
    code_version,
    declared_version,
    logged_code,
    reconcile_with_log,
)


class Undeclared(Immortal):
    pass


class DeclaresThree(Immortal):
    __ambrosia_version__ = 3


class DeclaresNonsense(Immortal):
    __ambrosia_version__ = "3"  # type: ignore[assignment]


def test_a_class_declares_its_version() -> None:
    assert declared_version(Undeclared) is None
    assert declared_version(DeclaresThree) == 3
    assert code_version(DeclaresThree, None) == 3
    assert code_version(DeclaresThree, 3) == 3
    assert code_version(Undeclared, 5) == 5
    assert code_version(Undeclared, None) is None
    with pytest.raises(ConfigError, match=r"--version 4, but .*DeclaresThree declares"):
        code_version(DeclaresThree, 4)
    with pytest.raises(ConfigError, match=r"__ambrosia_version__ = '3': expected an integer"):
        declared_version(DeclaresNonsense)
    # Never part of the state, never a method.
    assert "__ambrosia_version__" not in vars(DeclaresThree())


def test_an_old_class_is_refused_naming_both_versions() -> None:
    record = InstanceRecord("server", "127.0.0.1:1", "memory://x", "new:Class", 2, 2)
    assert check_version(record, None) == 2
    assert check_version(record, 2, app="new:Class") == 2
    with pytest.raises(ConfigError) as refused:
        check_version(record, 1, app="old:Class")
    assert "server runs version 2" in str(refused.value)
    assert "this process is version 1 (old:Class)" in str(refused.value)


def test_the_version_is_recorded_with_the_checkpoint_it_names() -> None:
    """Never in a swap before that checkpoint's (a chunk switch), always after."""

    async def scenario() -> None:
        store = await open_store("memory://versions", "server")
        lease = await store.acquire_lease()
        try:
            keeper = MetadataKeeper(store, lambda: lease, meta=None, version=None)
            await keeper.record_checkpoint(0, 0)
            await keeper.record_start(0, ChunkRange(0, 0))
            fields = ((LOG_VERSION_FIELD, "2"), (LOG_APP_FIELD, "new:Class"))
            keeper.record_fields_from(2, fields)
            await keeper.record_checkpoint(1, 0)
            await keeper.record_chunk(1)
            meta, _ = await store.read_meta()
            assert logged_code(meta) is None
            await keeper.record_checkpoint(2, 1)
            meta, _ = await store.read_meta()
            code = logged_code(meta)
            assert code is not None and (code.version, code.app) == (2, "new:Class")
            # Kept by the next life's start (only the primary's fields are replaced).
            await keeper.record_start(2, ChunkRange(1, 2))
            meta, _ = await store.read_meta()
            assert logged_code(meta) == code
        finally:
            await store.release_lease(lease)
            await store.close()

    asyncio.run(scenario())


def test_a_catalog_left_behind_is_brought_up_to_the_log(tmp_path: Path) -> None:
    async def scenario() -> None:
        catalog = await open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
        try:
            asked = await catalog.register(
                InstanceRecord("server", "127.0.0.1:1", "memory://x", "old:Class", 1, 2)
            )
            committed = Meta(3, 1, ((LOG_VERSION_FIELD, "2"), (LOG_APP_FIELD, "new:Class")))
            assert await reconcile_with_log(catalog, asked, Meta(3, 1)) is asked
            updated = await reconcile_with_log(catalog, asked, committed)
            assert (updated.current_version, updated.app) == (2, "new:Class")
            assert (await catalog.get("server")).current_version == 2
            # A log naming a version nobody asked for is refused, not adopted.
            stray = Meta(3, 1, ((LOG_VERSION_FIELD, "7"), (LOG_APP_FIELD, "x:Y")))
            with pytest.raises(NewerVersionError, match="written by version 7"):
                await reconcile_with_log(catalog, updated, stray)
        finally:
            await catalog.close()

    asyncio.run(scenario())


def test_status_shows_the_versions_and_an_upgrade_in_progress() -> None:
    async def scenario() -> None:
        record = InstanceRecord("server", "127.0.0.1:1", "memory://status", "old:Class", 1, 2)
        status = await read_status("memory://status", "server", record=record)
        text = render_status(status)
        assert "version   1 (catalog); upgrade to version 2 in progress" in text, text
        assert render_status(status, as_json=True).count('"upgrade": 2') == 1

    asyncio.run(scenario())


def test_an_old_standby_refuses_to_take_over_an_upgraded_log() -> None:
    """The check a standby runs at its takeover, once it holds the lease and has read
    the log's metadata (``VersionedRuntime._before_serving``)."""

    async def scenario() -> None:
        store = await open_store("memory://standby-check", "server")
        lease = await store.acquire_lease()
        try:
            keeper = MetadataKeeper(store, lambda: lease, meta=None, version=None)
            keeper.record_fields_from(0, ((LOG_VERSION_FIELD, "2"), (LOG_APP_FIELD, "new:C")))
            await keeper.record_checkpoint(0, 0)
            runtime = VersionedRuntime.__new__(VersionedRuntime)
            runtime.instance, runtime.metadata = "server", keeper
            runtime.code_version = 2
            await runtime._before_serving()  # the same version: takes over
            runtime.code_version = 1
            with pytest.raises(NewerVersionError) as refused:
                await runtime._before_serving()
            message = str(refused.value)
            assert "upgraded to version 2 (new:C)" in message, message
            assert "this process runs version 1: refusing to take over" in message, message
        finally:
            await store.release_lease(lease)
            await store.close()

    asyncio.run(scenario())


class Counter(Immortal):
    def __init__(self) -> None:
        self.count = 0


def test_an_old_cold_start_refuses_an_upgraded_log_before_restoring_anything() -> None:
    """An old-version process that takes the lease after an upgrade committed (its host
    checked the catalog before the upgrader died) refuses at the cold start, before the
    newer version's checkpoint is loaded into its code (``VersionedRuntime._before_restore``)."""

    async def resolve(name: str) -> tuple[str, int]:
        raise AssertionError(f"no peers here, asked for {name}")

    async def runtime_of(version: int) -> VersionedRuntime:
        return VersionedRuntime(
            instance="server",
            binding=in_process(Counter),
            store=await open_store("memory://cold-start-version", "server"),
            listen=("127.0.0.1", 0),
            resolve=resolve,
            role="primary",
            code_version=version,
        )

    async def scenario() -> None:
        new = await runtime_of(2)
        await new.start()
        assert new.metadata is not None and new.metadata.meta is not None
        meta = new.metadata.meta
        assert meta.checkpoint is not None and meta.chunks is not None
        # What the upgrade's commit records: the version beside the checkpoint it names.
        new.metadata.record_fields_from(
            meta.checkpoint, ((LOG_VERSION_FIELD, "2"), (LOG_APP_FIELD, "new:Counter"))
        )
        await new.metadata.record_checkpoint(meta.checkpoint, meta.chunks.first)
        await new.stop()
        store = await open_store("memory://cold-start-version", "server")
        before, _ = await store.read_meta()
        assert logged_code(before) is not None

        old = await runtime_of(1)
        with pytest.raises(NewerVersionError) as refused:
            await old.start()
        message = str(refused.value)
        assert "upgraded to version 2 (new:Counter)" in message, message
        assert "this process runs version 1" in message, message
        await old.stop()
        after, _ = await store.read_meta()
        assert after is not None and before is not None
        assert (after.checkpoint, after.chunks, after.extra) == (
            before.checkpoint,
            before.chunks,
            before.extra,
        )
        assert (await runtime_of(2)).code_version == 2  # the new version still may
        await store.close()

    asyncio.run(scenario())
