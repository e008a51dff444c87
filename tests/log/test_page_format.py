"""Page builder, decoder and scanner, on bytes only (no event loop, no files)."""

from __future__ import annotations

import re
import struct

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from ambrosia.errors import LogCorruptError, LogGapError
from ambrosia.log import (
    HEADER_BYTES,
    MAGIC,
    NAME_BYTES_MAX,
    ChunkScan,
    Page,
    PageBuilder,
    check_sequence,
    checkpoint_name,
    chunk_name,
    decode_page,
    instance_id_for,
    parse_checkpoint_name,
    parse_chunk_name,
    scan_chunk,
)

INSTANCE = instance_id_for("server")

names = st.text(min_size=0, max_size=12)
groups = st.lists(
    st.tuples(
        names,
        st.integers(1, 2**63 - 10**6),
        st.integers(1, 1000),
        st.one_of(
            st.binary(max_size=64),
            # At and around the size from which a group is written closed (not merged).
            st.integers(4090, 4200).map(lambda size: b"L" * size),
        ),
    ).flatmap(
        lambda group: st.tuples(
            st.just(group[0]),
            st.just(group[1]),
            st.just(group[2]),
            st.integers(0, group[2]),
            st.just(group[3]),
        )
    ),
    max_size=8,
)
trims = st.dictionaries(names, st.integers(0, 2**63 - 1), max_size=5)


def _expected_groups(
    added: list[tuple[str, int, int, int, bytes]],
) -> list[tuple[str, int, int, int, bytes]]:
    """The merge rule, restated: same source and contiguous numbers make one group, as
    long as neither the group before nor the one added has 4096 bytes of messages or more
    when added (such a group is written closed)."""
    merged: list[tuple[str, int, int, int, bytes]] = []
    last_open = False
    for source, first_seq, count, replayable, messages in added:
        small = len(messages) < 4096
        if merged and small and last_open:
            last = merged[-1]
            if last[0] == source and last[1] + last[2] == first_seq:
                merged[-1] = (
                    source,
                    last[1],
                    last[2] + count,
                    last[3] + replayable,
                    last[4] + messages,
                )
                continue
        merged.append((source, first_seq, count, replayable, messages))
        last_open = small
    return merged


@given(
    groups, trims, st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1)
)
@settings(max_examples=150)
def test_round_trip(
    added: list[tuple[str, int, int, int, bytes]],
    trim_points: dict[str, int],
    epoch: int,
    sequence: int,
    instance_id: int,
) -> None:
    builder = PageBuilder()
    for group in added:
        builder.add_group(*group)
    for destination, seq in trim_points.items():
        builder.add_trim(destination, seq)
    body_bytes = builder.body_bytes
    data = builder.finish(instance_id=instance_id, epoch=epoch, sequence=sequence)
    assert len(data) == HEADER_BYTES + body_bytes
    page = decode_page(data, 0, "test", instance_id=instance_id)
    assert (page.epoch, page.sequence, page.instance_id) == (epoch, sequence, instance_id)
    assert (page.offset, page.size_bytes) == (0, len(data))
    decoded = [
        (g.source, g.first_seq, g.count, g.replayable_count, bytes(g.messages)) for g in page.groups
    ]
    assert decoded == _expected_groups(added)
    assert dict(page.trims) == trim_points
    assert builder.is_empty and builder.body_bytes == 1  # reset: just an empty trim count


def test_merge_rule_and_contiguity() -> None:
    builder = PageBuilder()
    builder.add_group("a", 1, 2, 2, b"m1m2")
    builder.add_group("a", 3, 1, 0, b"i3")  # contiguous: merged
    builder.add_group("a", 5, 1, 1, b"m5")  # gap: new group
    builder.add_group("b", 6, 1, 1, b"m6")  # other source: new group
    builder.add_group("a", 6, 1, 1, b"m6")  # contiguous with an older group only: new group
    assert builder.group_count == 4
    page = decode_page(builder.finish(instance_id=1, epoch=1, sequence=0))
    assert [(g.source, g.first_seq, g.count, g.replayable_count) for g in page.groups] == [
        ("a", 1, 3, 2),
        ("a", 5, 1, 1),
        ("b", 6, 1, 1),
        ("a", 6, 1, 1),
    ]
    assert bytes(page.groups[0].messages) == b"m1m2i3"
    assert page.groups[0].last_seq == 3


def test_large_groups_are_written_closed() -> None:
    large = b"x" * 5000
    builder = PageBuilder()
    builder.add_group("a", 1, 1, 1, b"m1")
    builder.add_group("a", 2, 1, 1, large)  # contiguous but large: a group of its own
    builder.add_group("a", 3, 1, 1, b"m3")  # contiguous with a closed group: new group
    builder.add_group("a", 4, 1, 1, b"m4")  # merged into the open one
    builder.add_group("a", 5, 2, 2, large)
    body_bytes = builder.body_bytes
    data = builder.finish(instance_id=1, epoch=1, sequence=0)
    assert len(data) == HEADER_BYTES + body_bytes
    page = decode_page(data)
    assert [(g.first_seq, g.count, bytes(g.messages)) for g in page.groups] == [
        (1, 1, b"m1"),
        (2, 1, large),
        (3, 2, b"m3m4"),
        (5, 2, large),
    ]


def test_trims_keep_the_highest_point() -> None:
    builder = PageBuilder()
    builder.add_trim("x", 5)
    builder.add_trim("x", 3)
    builder.add_trim("y", 0)
    builder.add_trim("x", 9)
    page = decode_page(builder.finish(instance_id=1, epoch=1, sequence=0))
    assert dict(page.trims) == {"x": 9, "y": 0}
    assert page.groups == ()


def test_builder_checks_its_arguments_and_limit() -> None:
    builder = PageBuilder(page_bytes_max=100)
    with pytest.raises(ValueError, match="first_seq"):
        builder.add_group("a", 0, 1, 1, b"")
    with pytest.raises(ValueError, match="count"):
        builder.add_group("a", 1, 0, 0, b"")
    with pytest.raises(ValueError, match="replayable"):
        builder.add_group("a", 1, 1, 2, b"")
    # The limit is the instance-name limit (ambrosia.names), counted in bytes of UTF-8.
    with pytest.raises(ValueError, match=f"limit {NAME_BYTES_MAX}"):
        builder.add_group("é" * (NAME_BYTES_MAX // 2 + 1), 1, 1, 1, b"")
    with pytest.raises(ValueError, match=f"limit {NAME_BYTES_MAX}"):
        builder.add_trim("x" * (NAME_BYTES_MAX + 1), 1)
    builder.add_group("a", 1, 1, 1, b"x" * 80)
    with pytest.raises(ValueError, match="limit 100"):
        builder.add_group("b", 1, 1, 1, b"x" * 20)
    with pytest.raises(ValueError, match="over 100"):
        builder.add_trim("y" * 30, 1)
    before = builder.body_bytes
    builder.add_group("a", 2, 1, 1, b"x" * 5)  # merging adds no group header
    assert builder.body_bytes == before + 5
    data = builder.finish(instance_id=1, epoch=1, sequence=0)
    assert len(data) - HEADER_BYTES <= 100
    builder.add_group("a", 1, 1, 1, b"x")
    builder.reset()
    assert builder.is_empty


def _pages(
    count: int, *, instance: str = "server", first_sequence: int = 0, epoch: int = 1
) -> list[bytes]:
    builder = PageBuilder()
    pages = []
    for index in range(count):
        builder.add_group("client", 1 + 10 * index, 10, 10, bytes([index]) * (50 + index))
        builder.add_trim("client", index)
        pages.append(
            builder.finish(
                instance_id=instance_id_for(instance), epoch=epoch, sequence=first_sequence + index
            )
        )
    return pages


def test_scan_of_a_clean_chunk() -> None:
    pages = _pages(5)
    data = b"".join(pages)
    scan = scan_chunk(data, where="c", instance_id=INSTANCE)
    assert not scan.torn_tail and scan.torn_reason is None
    assert scan.valid_bytes == len(data)
    assert [page.sequence for page in scan.pages] == [0, 1, 2, 3, 4]
    assert [page.offset for page in scan.pages] == [sum(map(len, pages[:i])) for i in range(5)]
    assert scan_chunk(b"", where="c", instance_id=INSTANCE) == ChunkScan((), 0, False, None)


def test_scan_of_a_chunk_with_trailing_zeros_is_torn() -> None:
    data = b"".join(_pages(3))
    scan = scan_chunk(data + bytes(4096), where="c", instance_id=INSTANCE)
    assert scan.torn_tail and scan.valid_bytes == len(data) and len(scan.pages) == 3
    assert scan.torn_reason is not None and "magic" in scan.torn_reason


@pytest.mark.parametrize(
    ("make_bad", "reason"),
    [
        (lambda pages: [pages[0], _pages(1, instance="other", first_sequence=1)[0]], "instance id"),
        (lambda pages: [pages[0], pages[2]], "sequence 2 after 0"),
        (lambda pages: [pages[0], pages[0]], "sequence 0 after 0"),
        (lambda pages: _pages(1, epoch=5) + _pages(1, first_sequence=1, epoch=4), "epoch 4 after"),
    ],
)
def test_intact_but_wrong_pages_are_corruption_even_at_the_tail(make_bad, reason: str) -> None:  # type: ignore[no-untyped-def]
    pages = make_bad(_pages(3))
    with pytest.raises(LogCorruptError, match=reason) as caught:
        scan_chunk(b"".join(pages), where="chunk-x", instance_id=INSTANCE)
    assert caught.value.where == "chunk-x"
    assert caught.value.offset == len(pages[0])


def _resealed(page: bytes, *, body: bytes | None = None, **fields: int) -> bytes:
    """A page with changed header fields or body, both checksums recomputed (a writer bug)."""
    header = bytearray(page[:HEADER_BYTES])
    layout = {
        "version": ("<H", 4),
        "header_length": ("<H", 6),
        "body_length": ("<I", 28),
        "group_count": ("<I", 32),
    }
    for name, value in fields.items():
        fmt, offset = layout[name]
        struct.pack_into(fmt, header, offset, value)
    if body is None:
        body = page[HEADER_BYTES:]
    struct.pack_into("<Q", header, 36, xxhash.xxh64_intdigest(body))
    struct.pack_into("<I", header, 44, xxhash.xxh32_intdigest(bytes(header[:44])))
    return bytes(header) + body


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"version": 2}, "format version"),
        ({"header_length": 64}, "header length"),
        ({"group_count": 2}, "malformed body"),
        ({"group_count": 0}, "malformed body"),
        ({"body": b"\x02a"}, "malformed body"),
        ({"body": b""}, "runs past the end"),
        ({"body": b"\x00\x00"}, "left over"),
        ({"body": b"\xff\xff\xff\xff\xff\x01"}, "varint"),
    ],
)
def test_malformed_intact_pages_are_corruption(change: dict[str, object], reason: str) -> None:
    page = _pages(1)[0]
    change = dict(change)
    body = change.pop("body", None)
    assert body is None or isinstance(body, bytes)
    bad = _resealed(page, body=body, **change)  # type: ignore[arg-type]
    if body is not None:
        bad = _resealed(bad, body_length=len(body), group_count=0)
    with pytest.raises(LogCorruptError, match=reason):
        scan_chunk(bad, where="c", instance_id=INSTANCE)
    with pytest.raises(LogCorruptError, match=reason):
        decode_page(bad)


def test_body_length_is_checked_against_the_limit_before_slicing() -> None:
    page = _pages(1)[0]
    with pytest.raises(LogCorruptError, match="over the limit of 16"):
        scan_chunk(page, where="c", instance_id=INSTANCE, page_bytes_max=16)
    huge = bytearray(page[:HEADER_BYTES])
    struct.pack_into("<I", huge, 28, 2**32 - 1)
    struct.pack_into("<I", huge, 44, xxhash.xxh32_intdigest(bytes(huge[:44])))
    with pytest.raises(LogCorruptError, match="over the limit"):
        decode_page(bytes(huge))


def test_decode_page_refuses_a_broken_frame_and_a_foreign_instance() -> None:
    page = _pages(1)[0]
    with pytest.raises(LogCorruptError, match="short header"):
        decode_page(page[:10], 0, "c")
    with pytest.raises(LogCorruptError, match="body checksum"):
        decode_page(page[:-1] + bytes([page[-1] ^ 1]), 0, "c")
    with pytest.raises(LogCorruptError, match="instance id"):
        decode_page(page, 0, "c", instance_id=INSTANCE + 1)
    assert decode_page(b"junk" + page, 4, "c").offset == 4


@given(st.binary(max_size=600), st.integers(0, 2000))
@settings(max_examples=300)
def test_any_bytes_scan_or_raise_the_one_error(junk: bytes, cut: int) -> None:
    """Fuzz: arbitrary bytes, alone or spliced into real pages, never raise anything else."""
    pages = b"".join(_pages(3))
    for data in (junk, pages[:cut] + junk, pages + junk, junk + pages):
        try:
            scan = scan_chunk(data, where="fuzz", instance_id=INSTANCE)
        except LogCorruptError:
            continue
        assert scan.valid_bytes <= len(data)
        assert scan.torn_tail == (scan.valid_bytes < len(data))


@given(st.integers(0, 2**32), st.binary(min_size=1, max_size=200))
def test_a_lone_magic_in_garbage_is_not_taken_for_a_page(position: int, junk: bytes) -> None:
    data = b"".join(_pages(2))
    tail = bytearray(junk)
    at = position % len(tail)
    tail[at:at] = MAGIC
    scan = scan_chunk(data + bytes(tail), where="c", instance_id=INSTANCE)
    assert scan.torn_tail and len(scan.pages) == 2


# -- check_sequence --------------------------------------------------------------------


def _scan(first_sequence: int, count: int, *, torn: bool = False, epoch: int = 1) -> ChunkScan:
    data = b"".join(_pages(count, first_sequence=first_sequence, epoch=epoch))
    if torn:
        data += _pages(1, first_sequence=first_sequence + count)[0][:-3]
    return scan_chunk(data, where="c", instance_id=INSTANCE)


def test_check_sequence_accepts_a_continuous_log() -> None:
    chunks = [(4, _scan(0, 3)), (5, _scan(3, 0)), (6, _scan(3, 2, torn=True)), (7, _scan(5, 1))]
    assert chunks[2][1].torn_tail
    assert check_sequence(chunks) == 5
    assert check_sequence([]) is None
    assert check_sequence([(0, _scan(0, 0))]) is None


def test_check_sequence_finds_a_missing_chunk() -> None:
    with pytest.raises(LogGapError, match="chunk 6 follows chunk 4"):
        check_sequence([(4, _scan(0, 3)), (6, _scan(3, 2))])


def test_check_sequence_finds_a_page_gap() -> None:
    with pytest.raises(
        LogGapError, match=re.escape("page sequence 4 (chunk 1 offset 0) does not follow page 2")
    ):
        check_sequence([(0, _scan(0, 3)), (1, _scan(4, 2))])
    # A torn tail does not excuse a gap: the next chunk continues from the last GOOD page.
    with pytest.raises(LogGapError, match="does not follow page 2"):
        check_sequence([(0, _scan(0, 3, torn=True)), (1, _scan(4, 2))])


def test_check_sequence_checks_the_first_sequence_when_known() -> None:
    chunks = [(3, _scan(0, 0)), (4, _scan(7, 2))]
    assert check_sequence(chunks, first_sequence=7) == 8
    with pytest.raises(
        LogGapError, match=re.escape("(chunk 4 offset 0) has sequence 7, expected 5")
    ):
        check_sequence(chunks, first_sequence=5)


def test_check_sequence_finds_a_decreasing_epoch() -> None:
    with pytest.raises(LogCorruptError, match="epoch 1 after epoch 2"):
        check_sequence([(0, _scan(0, 3, epoch=2)), (1, _scan(3, 2, epoch=1))])


def test_page_is_a_frozen_value() -> None:
    page = decode_page(_pages(1)[0])
    assert isinstance(page, Page)
    with pytest.raises(AttributeError):
        page.epoch = 3  # type: ignore[misc]


def test_object_names() -> None:
    assert chunk_name(42) == "chunk-00000042.log"
    assert checkpoint_name(7) == "checkpoint-00000007.ckpt"
    assert parse_chunk_name(chunk_name(123456789)) == 123456789
    assert parse_checkpoint_name(checkpoint_name(0)) == 0
    for other in (
        "chunk-1.log",
        ".chunk-00000001.log.tmp-ab",
        "checkpoint-00000001.ckpt.tmp",
        "meta.json",
    ):
        assert parse_chunk_name(other) is None and parse_checkpoint_name(other) is None
    with pytest.raises(ValueError):
        chunk_name(-1)
