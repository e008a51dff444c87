"""The power-loss storage itself: what survives a crash is what was made durable.

The simulated disk stands in for real power loss (which no test machine can produce);
these tests pin its model down on the real ``FileLogStore`` and on the memory store,
including one product bug it found: chunks created by the store were appended to
through a descriptor opened without ``O_DSYNC``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from ambrosia.backends import file, memory
from ambrosia.backends.base import Meta
from ambrosia.testing.powerloss import PowerLossDisk, PowerLossStore, SimulatedCrash

SEEDS = range(24)
PAGE = b"p" * 300


@pytest.fixture
def disk() -> Iterator[PowerLossDisk]:
    with PowerLossDisk(random.Random(0)).installed() as installed:
        yield installed


def _store(root: Path, disk: PowerLossDisk) -> file.FileLogStore:
    disk.track(root / "a")
    return file.FileLogStore(root, "a")


def test_an_append_to_a_chunk_the_store_created_survives(
    tmp_path: Path, disk: PowerLossDisk
) -> None:
    """Regression: ``create_chunk`` kept its own descriptor (without O_DSYNC) for the
    appends that followed, so every page of every life sat in the page cache only."""

    async def scenario(root: Path) -> bytes:
        store = _store(root, disk)
        lease = await store.acquire_lease()
        await store.create_chunk(lease, 0)
        await store.append(lease, 0, expected_offset=0, data=PAGE)
        await store.append(lease, 0, expected_offset=len(PAGE), data=PAGE)
        disk.crash(root / "a")
        return (root / "a" / "chunk-00000000.log").read_bytes()

    for seed in SEEDS:
        disk.rng = random.Random(seed)
        assert asyncio.run(scenario(tmp_path / str(seed))) == PAGE * 2, f"seed {seed}"


def test_a_page_written_without_sync_can_be_lost(tmp_path: Path, disk: PowerLossDisk) -> None:
    """The disk notices a missing sync: cached writes are lost or torn at a crash."""
    survivors = set()
    for seed in SEEDS:
        disk.rng = random.Random(seed)
        directory = tmp_path / str(seed)
        disk.track(directory)
        fd = file.os.open(directory / "f", file.os.O_RDWR | file.os.O_CREAT, 0o644)
        file.os.pwrite(fd, PAGE, 0)
        file.os.fsync(directory_fd := file.os.open(directory, file.os.O_RDONLY))
        file.os.close(directory_fd)
        disk.crash(directory)
        survivors.add(len((directory / "f").read_bytes()))
    assert len(PAGE) in survivors, "a cached write may also reach the disk"
    assert any(size < len(PAGE) for size in survivors), "lost or torn is one outcome"


def test_a_crash_during_an_append_leaves_a_prefix_the_audit_cuts(
    tmp_path: Path, disk: PowerLossDisk
) -> None:
    async def scenario(root: Path) -> int:
        store = _store(root, disk)
        lease = await store.acquire_lease()
        await store.create_chunk(lease, 0)
        await store.append(lease, 0, expected_offset=0, data=PAGE)
        disk.arm(root / "a", 1, lambda: None)
        with pytest.raises(SimulatedCrash):
            await store.append(lease, 0, expected_offset=len(PAGE), data=PAGE)
        with pytest.raises(SimulatedCrash):
            await store.append(lease, 0, expected_offset=len(PAGE), data=PAGE)
        return len((root / "a" / "chunk-00000000.log").read_bytes())

    sizes = set()
    for seed in SEEDS:
        disk.rng = random.Random(seed)
        size = asyncio.run(scenario(tmp_path / str(seed)))
        assert len(PAGE) <= size <= 2 * len(PAGE), f"seed {seed}: the first page is durable"
        sizes.add(size)
    assert len(sizes) > 2, "the interrupted write lands torn at various lengths"


def test_checkpoints_and_metadata_appear_whole_or_not_at_all(
    tmp_path: Path, disk: PowerLossDisk
) -> None:
    """Write-temporary, fsync, rename, fsync the directory: old or new, never a part."""

    async def scenario(root: Path, crash_after: int) -> tuple[bytes | None, Meta | None]:
        store = _store(root, disk)
        lease = await store.acquire_lease()
        version = await store.swap_meta(lease, expected=None, new=Meta(checkpoint=None, epoch=1))
        disk.arm(root / "a", crash_after, lambda: None)
        try:
            await store.write_checkpoint(lease, 1, b"c" * 500)
            await store.swap_meta(lease, expected=version, new=Meta(checkpoint=1, epoch=1))
        except SimulatedCrash:
            pass
        disk.crash(root / "a")
        disk.revive(root / "a")
        reader = file.FileLogStore(root, "a")
        numbers = await reader.list_checkpoints()
        checkpoint = await reader.read_checkpoint(1) if numbers else None
        meta, _ = await reader.read_meta()
        return checkpoint, meta

    outcomes = set()
    for crash_after in range(1, 14):
        for seed in range(4):
            disk.rng = random.Random(seed)
            checkpoint, meta = asyncio.run(
                scenario(tmp_path / f"{crash_after}-{seed}", crash_after)
            )
            assert checkpoint in (None, b"c" * 500)
            assert meta is not None and meta.checkpoint in (None, 1)
            if meta.checkpoint == 1:
                assert checkpoint is not None, "the metadata never names a missing checkpoint"
            outcomes.add((checkpoint is not None, meta.checkpoint))
    assert outcomes == {(False, None), (True, None), (True, 1)}


def test_the_lease_dies_with_the_writer(tmp_path: Path, disk: PowerLossDisk) -> None:
    async def scenario() -> int:
        store = _store(tmp_path, disk)
        first = await store.acquire_lease()
        disk.crash(tmp_path / "a")
        with pytest.raises(SimulatedCrash):
            await store.create_chunk(first, 0)
        disk.revive(tmp_path / "a")
        successor = file.FileLogStore(tmp_path, "a")
        lease = await successor.acquire_lease(wait_s=0)  # at once: the flock is gone
        await successor.close()
        return lease.epoch

    assert asyncio.run(scenario()) >= 2


def test_a_store_call_in_flight_at_a_crash_is_applied_or_dropped() -> None:
    async def scenario(seed: int) -> tuple[int, int]:
        name = f"powerloss-{seed}"
        store = PowerLossStore(memory.MemoryLogStore(name, "a"), random.Random(seed))
        lease = await store.acquire_lease()
        await store.create_chunk(lease, 0)
        await store.append(lease, 0, expected_offset=0, data=PAGE)
        store.arm(1, lambda: None)
        with pytest.raises(SimulatedCrash):
            await store.append(lease, 0, expected_offset=len(PAGE), data=PAGE)
        with pytest.raises(SimulatedCrash):
            await store.read_chunk(0)
        successor = memory.MemoryLogStore(name, "a")
        await successor.acquire_lease(wait_s=0)  # the dead writer's lease expired
        size = len(await successor.read_chunk(0))
        memory.forget(name)
        return size, len(store.applied_at_crash)

    outcomes = {asyncio.run(scenario(seed)) for seed in SEEDS}
    assert outcomes == {(len(PAGE), 0), (2 * len(PAGE), 1)}
