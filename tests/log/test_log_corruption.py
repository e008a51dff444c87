"""Torn tails versus corruption, on real chunk files written by the file log store.

Each test writes a log through ``FileLogStore`` (pwrite + fdatasync), damages the file
on disk the way a crash or a failing disk would, reads it back through the store and
runs the recovery audit (``scan_chunk`` per chunk, then ``check_sequence``).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import anyio
import pytest

from ambrosia.backends.file import FileLogStore
from ambrosia.backends.file import open as open_file_store
from ambrosia.errors import LogCorruptError, LogGapError
from ambrosia.log import ChunkScan, Page, PageBuilder, check_sequence, instance_id_for, scan_chunk

INSTANCE = "server"
INSTANCE_ID = instance_id_for(INSTANCE)
SECTOR_BYTES = 512


async def _open(root: Path) -> FileLogStore:
    from urllib.parse import urlsplit

    return await open_file_store(urlsplit(root.as_uri()), INSTANCE)


def _page(sequence: int, payload_bytes: int) -> bytes:
    builder = PageBuilder()
    payload = random.Random(sequence).randbytes(payload_bytes)
    builder.add_group("client", 1 + 100 * sequence, 100, 100, payload)
    builder.add_trim("client", sequence)
    return builder.finish(instance_id=INSTANCE_ID, epoch=1, sequence=sequence)


async def _write_log(root: Path, chunk_pages: list[int], payload_bytes: int = 1500) -> FileLogStore:
    """Chunks 0, 1, ... holding chunk_pages[i] pages each, sequence continuous."""
    store = await _open(root)
    lease = await store.acquire_lease()
    sequence = 0
    for chunk, page_count in enumerate(chunk_pages):
        await store.create_chunk(lease, chunk)
        offset = 0
        for _ in range(page_count):
            page = _page(sequence, payload_bytes)
            await store.append(lease, chunk, expected_offset=offset, data=page)
            offset += len(page)
            sequence += 1
    await store.release_lease(lease)
    return store


async def _scan(store: FileLogStore, chunk: int) -> ChunkScan:
    data = await store.read_chunk(chunk)
    return scan_chunk(data, where=str(store.chunk_path(chunk)), instance_id=INSTANCE_ID)


async def _audit(store: FileLogStore) -> list[tuple[int, ChunkScan]]:
    """The recovery audit: scan every chunk, then check the whole sequence."""
    scans = [
        (chunk.number, await _scan(store, chunk.number)) for chunk in await store.list_chunks()
    ]
    check_sequence(scans, first_sequence=0)  # these logs start at chunk 0
    return scans


def _overwrite(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def _pages_of(scan: ChunkScan) -> list[tuple[int, int]]:
    return [(page.offset, page.sequence) for page in scan.pages]


def _page_containing(pages: tuple[Page, ...], offset: int) -> Page:
    return next(page for page in pages if page.offset <= offset < page.end_offset)


def test_a_clean_log_audits_clean(tmp_path: Path) -> None:
    async def main() -> None:
        store = await _write_log(tmp_path, [4, 3, 5])
        scans = await _audit(store)
        assert [len(scan.pages) for _, scan in scans] == [4, 3, 5]
        assert not any(scan.torn_tail for _, scan in scans)
        assert check_sequence(scans) == 11
        await store.close()

    anyio.run(main)


def test_truncation_at_every_offset_within_the_last_page_is_a_torn_tail(tmp_path: Path) -> None:
    async def main() -> None:
        store = await _write_log(tmp_path, [6], payload_bytes=300)
        path = store.chunk_path(0)
        clean = await _scan(store, 0)
        last = clean.pages[-1]
        expected = _pages_of(clean)[:-1]
        for cut in range(last.end_offset - 1, last.offset, -1):
            os.truncate(path, cut)
            scan = await _scan(store, 0)
            assert scan.torn_tail, cut
            assert scan.valid_bytes == last.offset, cut
            assert _pages_of(scan) == expected, cut
            check_sequence([(0, scan)])
        os.truncate(path, last.offset)  # cut exactly at a page boundary: nothing is torn
        scan = await _scan(store, 0)
        assert not scan.torn_tail and _pages_of(scan) == expected
        await store.close()

    anyio.run(main)


def test_truncation_inside_an_earlier_page(tmp_path: Path) -> None:
    """Documented outcome: within the last chunk, a cut anywhere is a torn tail that also
    loses every later page; when a later chunk exists, the audit reports the gap."""

    async def main() -> None:
        store = await _write_log(tmp_path, [6, 2], payload_bytes=300)
        path = store.chunk_path(0)
        clean = await _scan(store, 0)
        original = path.read_bytes()
        for victim in (0, 2, 4):
            page = clean.pages[victim]
            for cut in (page.offset + 1, page.offset + 47, page.offset + 48, page.end_offset - 1):
                path.write_bytes(original[:cut])
                scan = await _scan(store, 0)
                assert scan.torn_tail and scan.valid_bytes == page.offset
                assert _pages_of(scan) == _pages_of(clean)[:victim]
                # Chunk 1 starts at sequence 6: the cut pages are missing before it.
                expected = f"does not follow page {victim - 1}" if victim else "expected 0"
                with pytest.raises(LogGapError, match=expected):
                    await _audit(store)
        await store.close()

    anyio.run(main)


def test_a_zeroed_sector_in_the_middle_is_corruption_naming_file_and_offset(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        store = await _write_log(tmp_path, [10])
        path = store.chunk_path(0)
        clean = await _scan(store, 0)
        original = path.read_bytes()
        middle_sectors = range(SECTOR_BYTES, clean.pages[-2].offset, SECTOR_BYTES)
        for sector_offset in middle_sectors:
            path.write_bytes(original)
            _overwrite(path, sector_offset, bytes(SECTOR_BYTES))
            with pytest.raises(LogCorruptError) as caught:
                await _audit(store)
            assert caught.value.where == str(path)
            assert caught.value.offset == _page_containing(clean.pages, sector_offset).offset
            assert str(path) in str(caught.value)
            assert f"offset {caught.value.offset}" in str(caught.value)
        await store.close()

    anyio.run(main)


def test_a_zeroed_sector_at_the_tail_is_a_torn_tail(tmp_path: Path) -> None:
    async def main() -> None:
        store = await _write_log(tmp_path, [10])
        path = store.chunk_path(0)
        clean = await _scan(store, 0)
        original = path.read_bytes()
        size = clean.valid_bytes
        last = clean.pages[-1]
        sector_offset = (size - 1) // SECTOR_BYTES * SECTOR_BYTES
        assert sector_offset > last.offset  # the sector lies inside the last page
        _overwrite(path, sector_offset, bytes(SECTOR_BYTES))  # also extends the file
        scans = await _audit(store)
        scan = scans[0][1]
        assert scan.torn_tail and scan.valid_bytes == last.offset
        assert _pages_of(scan) == _pages_of(clean)[:-1]

        # A zeroed sector straddling the last two pages destroys the last page's header:
        # nothing intact follows, so both pages are cut off as one torn tail.
        path.write_bytes(original)
        straddle = last.offset - 100
        _overwrite(path, straddle, bytes(SECTOR_BYTES))
        scan = (await _audit(store))[0][1]
        assert scan.torn_tail and scan.valid_bytes == clean.pages[-2].offset
        await store.close()

    anyio.run(main)


def _flip_bit(path: Path, offset: int, original: bytes) -> None:
    _overwrite(path, offset, bytes([original[offset] ^ (1 << (offset % 8))]))


def test_a_flipped_bit_in_the_last_page_is_cut_off_as_torn(tmp_path: Path) -> None:
    async def main() -> None:
        store = await _write_log(tmp_path, [5], payload_bytes=200)
        path = store.chunk_path(0)
        clean = await _scan(store, 0)
        original = path.read_bytes()
        last = clean.pages[-1]
        for offset in range(last.offset, last.end_offset):
            _flip_bit(path, offset, original)
            scan = (await _audit(store))[0][1]
            assert scan.torn_tail, offset
            assert scan.valid_bytes == last.offset, offset
            assert len(scan.pages) == len(clean.pages) - 1
            _overwrite(path, offset, original[offset : offset + 1])
        assert (await _scan(store, 0)) == clean
        await store.close()

    anyio.run(main)


def test_a_flipped_bit_in_a_middle_page_is_corruption(tmp_path: Path) -> None:
    async def main() -> None:
        store = await _write_log(tmp_path, [5], payload_bytes=200)
        path = store.chunk_path(0)
        clean = await _scan(store, 0)
        original = path.read_bytes()
        victim = clean.pages[2]
        for offset in range(victim.offset, victim.end_offset):
            _flip_bit(path, offset, original)
            with pytest.raises(LogCorruptError) as caught:
                await _audit(store)
            assert (caught.value.where, caught.value.offset) == (str(path), victim.offset), offset
            _overwrite(path, offset, original[offset : offset + 1])
        await store.close()

    anyio.run(main)


def test_a_missing_chunk_is_a_gap(tmp_path: Path) -> None:
    async def main() -> None:
        store = await _write_log(tmp_path, [3, 2, 4])
        store.chunk_path(1).unlink()
        with pytest.raises(LogGapError, match="chunk 2 follows chunk 0"):
            await _audit(store)
        await store.close()

    anyio.run(main)


def test_a_successor_continues_after_a_torn_tail_in_a_new_chunk(tmp_path: Path) -> None:
    """The recovery flow the audit allows: cut the torn page, continue in a new chunk."""

    async def main() -> None:
        store = await _write_log(tmp_path, [4], payload_bytes=300)
        path = store.chunk_path(0)
        clean = await _scan(store, 0)
        os.truncate(path, clean.pages[-1].end_offset - 10)
        torn = await _scan(store, 0)
        assert torn.torn_tail
        last_good = check_sequence([(0, torn)])
        assert last_good == 2

        successor = await _open(tmp_path)
        lease = await successor.acquire_lease()
        await successor.create_chunk(lease, 1)
        page = _page(last_good + 1, 300)
        await successor.append(lease, 1, expected_offset=0, data=page)
        scans = await _audit(successor)
        assert [page.sequence for _, scan in scans for page in scan.pages] == [0, 1, 2, 3]
        await successor.close()
        await store.close()

    anyio.run(main)
