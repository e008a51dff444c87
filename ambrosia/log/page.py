"""Log pages: the byte layout, the builder, the decoder and the chunk scanner (sans-IO).

A page is one group-committed unit of an instance's log. A chunk (one file or object)
holds pages back to back, nothing else. Every integer in the header is little-endian.

Page layout
===========

::

    offset  size  field             meaning
    ------  ----  ----------------  -------------------------------------------------
         0     4  magic             b"AMBP"
         4     2  format version    u16, currently 1
         6     2  header length     u16, 48 for version 1 (the body starts here)
         8     4  instance id       u32, xxh32 (seed 0) of the instance's UTF-8 name
        12     8  epoch             u64, the writer lease's epoch
        20     8  page sequence     u64, 0 for the instance's first page, then +1 per
                                    page, continuous across chunks
        28     4  body length       u32, bytes of body after the header
        32     4  group count       u32, input groups at the start of the body
        36     8  body checksum     u64, xxh64 (seed 0) of the body bytes
        44     4  header checksum   u32, xxh32 (seed 0) of header bytes 0..43
        48     -  body              body length bytes

    body  := group * (group count), trims
    group := source name length (ZigZagInt, 0..64), source name (UTF-8),
             first seq (ZigZagLong, >= 1: the number of the group's first message in
                        the stream from that source, whose first message is 1),
             count (ZigZagInt, >= 1), replayable count (ZigZagInt, 0..count: messages
             that are not impulses), messages length (ZigZagInt),
             messages (opaque packed RPC messages; this module never parses them)
    trims := trim count (ZigZagInt), then that many pairs of
             destination name length (ZigZagInt, 0..64), destination name (UTF-8),
             trim seq (ZigZagLong, >= 0): "the receiver has durably logged everything
             up to this seq from us", so output up to it never needs resending.

ZigZagInt / ZigZagLong are the varints of the binding protocol (PROTOCOL.md,
``ambrosia.wire.varint``).

Why two checksums
-----------------
The header checksum covers only the 44 header bytes before it, so a reader can tell a
real page header from random bytes without trusting the body length it states. That is
what lets the scanner, after a bad page, look further into the chunk for a later
intact page (search for the magic, then verify the header) without being misled by a
damaged length field. The body checksum covers the body and is stored in the header,
so a header that verifies also vouches for the exact body bytes. The group count is in
the header (not the body) so the builder can fill every field after the body is
complete, without moving the body.

Torn tail versus corruption
---------------------------
A crash while a page is being written leaves a prefix of that page, possibly followed
by zeros or garbage up to a block boundary: a *torn tail*. The page was never
acknowledged (durability comes only after the write completed), so it is cut off and
the writer starts a new chunk. A bad page with an intact page after it is something
else: bytes that were durable and acknowledged have been damaged. That is
*corruption*; recovery must refuse to start rather than silently drop acknowledged
input. The scanner applies this rule:

- A page whose *frame* is broken (short header, bad magic, bad header checksum, body
  running past the end of the data, bad body checksum) ends the scan. If an intact page
  (valid header checksum, body checksum, and this instance's id) starts anywhere after
  the broken page's first byte, ``LogCorruptError`` names the chunk and the offset of
  the broken page. Otherwise the scan returns the good pages with ``torn_tail=True``.
- A page whose frame is intact but whose content is wrong (another instance's id, an
  unknown format version, a body over ``page_bytes_max``, a sequence that is not the
  previous page's plus one, a decreasing epoch, a malformed body) is always corruption:
  both checksums hold, so the page was written whole, and a torn write cannot make one.

Truncation (a file cut short at any offset) looks exactly like a torn tail: the pages
after the cut are lost without a trace inside that chunk. ``check_sequence`` catches it
when a later chunk exists, because that chunk's first page no longer continues the
sequence of the last good page.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import xxhash

from ambrosia.errors import LogCorruptError, LogGapError, ProtocolError
from ambrosia.names import INSTANCE_NAME_BYTES_MAX
from ambrosia.wire.varint import (
    INT32_MAX,
    INT64_MAX,
    Incomplete,
    decode_zigzag_int,
    decode_zigzag_long,
    encode_zigzag_int,
    encode_zigzag_long,
    zigzag_int_size,
)

__all__ = [
    "FORMAT_VERSION",
    "HEADER_BYTES",
    "MAGIC",
    "NAME_BYTES_MAX",
    "PAGE_BYTES_MAX_DEFAULT",
    "ChunkScan",
    "InputGroup",
    "Page",
    "PageBuilder",
    "check_sequence",
    "decode_page",
    "instance_id_for",
    "scan_chunk",
    "seal_page",
]

MAGIC = b"AMBP"
FORMAT_VERSION = 1
HEADER_BYTES = 48
# Names in a page are instance names: the limit is theirs (ambrosia.names).
NAME_BYTES_MAX: Final = INSTANCE_NAME_BYTES_MAX
PAGE_BYTES_MAX_DEFAULT = 8 * 1024 * 1024
"""Default limit on a page's body length; the decoder checks it before slicing."""

# Everything before the header checksum, which follows at offset 44.
# Groups of at least this many message bytes are written closed (header, then messages)
# instead of staying open for the next contiguous group to merge into: merging saves a
# header of a few bytes per group, which only matters for small groups.
_CLOSED_GROUP_BYTES_MIN = 4096
_HEADER_FIELDS = struct.Struct("<4sHHIQQIIQ")
_HEADER_CHECKSUM = struct.Struct("<I")
_HEADER_CHECKSUM_OFFSET = _HEADER_FIELDS.size
_BODY_CHECKSUM = struct.Struct("<Q")
_BODY_CHECKSUM_OFFSET = _HEADER_FIELDS.size - _BODY_CHECKSUM.size  # the last header field
assert _HEADER_CHECKSUM_OFFSET + _HEADER_CHECKSUM.size == HEADER_BYTES

_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1


def instance_id_for(name: str) -> int:
    """The u32 instance id stored in every page: xxh32 (seed 0) of the UTF-8 name."""
    return int(xxhash.xxh32_intdigest(name.encode("utf-8")))


# -- varints ---------------------------------------------------------------------------


class _BodyError(Exception):
    """Malformed body bytes; turned into LogCorruptError with the page's location."""


def _zigzag_size(value: int, bits: int) -> int:
    return zigzag_int_size(value) if bits == 32 else len(encode_zigzag_long(value))


def _read_zigzag(body: memoryview, position: int, bits: int) -> tuple[int, int]:
    """Decode one varint of the body at position; returns (value, next position)."""
    try:
        if bits == 32:
            return decode_zigzag_int(body, position)
        return decode_zigzag_long(body, position)
    except Incomplete:
        raise _BodyError(f"varint at body offset {position} runs past the end") from None
    except ProtocolError as error:
        raise _BodyError(f"varint at body offset {position}: {error}") from error


def _encode_name(name: str, what: str) -> bytes:
    encoded = name.encode("utf-8")
    if len(encoded) > NAME_BYTES_MAX:
        raise ValueError(f"{what} {name!r} is {len(encoded)} bytes, limit {NAME_BYTES_MAX}")
    return encoded


def _read_name(body: memoryview, position: int) -> tuple[str, int]:
    length, position = _read_zigzag(body, position, 32)
    if not 0 <= length <= NAME_BYTES_MAX:
        raise _BodyError(f"name length {length} outside 0..{NAME_BYTES_MAX}")
    if position + length > len(body):
        raise _BodyError("name runs past the end of the body")
    try:
        name = bytes(body[position : position + length]).decode("utf-8")
    except UnicodeDecodeError as error:
        raise _BodyError(f"name is not UTF-8: {error}") from error
    return name, position + length


# -- data types ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InputGroup:
    """Consecutive messages from one source, in that source's order.

    ``messages`` is a view into the chunk's bytes when decoded (no copy).
    """

    source: str
    first_seq: int
    count: int
    replayable_count: int
    messages: bytes | memoryview

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1


@dataclass(frozen=True, slots=True)
class Page:
    """One decoded page. ``offset`` and ``size_bytes`` locate it in its chunk."""

    epoch: int
    sequence: int
    groups: tuple[InputGroup, ...]
    trims: tuple[tuple[str, int], ...]
    offset: int
    size_bytes: int
    instance_id: int = 0

    @property
    def end_offset(self) -> int:
        return self.offset + self.size_bytes


@dataclass(frozen=True, slots=True)
class ChunkScan:
    """What a chunk holds: its good pages and where the good bytes end.

    ``valid_bytes`` is the end of the last good page; when ``torn_tail`` is set, the
    bytes after it are a torn write (``torn_reason`` says what failed) to be ignored.
    """

    pages: tuple[Page, ...]
    valid_bytes: int
    torn_tail: bool
    torn_reason: str | None


# -- builder ---------------------------------------------------------------------------


class PageBuilder:
    """Fills one page at a time into a reusable bytearray.

    The header space is reserved up front and written last, so the body is never moved.
    The messages of the newest group go straight into the buffer; that group's own
    header (whose varint sizes depend on the final count) is inserted in front of its
    messages when the next group starts or the page is finished, which moves only that
    one group's bytes. A small group that continues the previous one (same source,
    first_seq right after its last message) is merged into it. A large group (at least
    ``_CLOSED_GROUP_BYTES_MIN`` bytes of messages) is never merged: its header is written
    first, then its messages, so its bytes are never moved.
    """

    __slots__ = (
        "_buffer",
        "_closed_group_count",
        "_open_count",
        "_open_first_seq",
        "_open_replayable_count",
        "_open_source",
        "_open_source_bytes",
        "_open_start",
        "_trims",
        "page_bytes_max",
    )

    def __init__(self, *, page_bytes_max: int = PAGE_BYTES_MAX_DEFAULT) -> None:
        if not 0 < page_bytes_max <= _UINT32_MAX:
            raise ValueError(f"page_bytes_max {page_bytes_max} outside 1..{_UINT32_MAX}")
        self.page_bytes_max = page_bytes_max
        self._buffer = bytearray(HEADER_BYTES)
        self._trims: dict[str, int] = {}
        self._closed_group_count = 0
        self._open_source: str | None = None
        self._open_source_bytes = b""
        self._open_first_seq = 0
        self._open_count = 0
        self._open_replayable_count = 0
        self._open_start = HEADER_BYTES

    @property
    def group_count(self) -> int:
        return self._closed_group_count + (self._open_source is not None)

    @property
    def is_empty(self) -> bool:
        return self.group_count == 0 and not self._trims

    @property
    def body_bytes(self) -> int:
        """The body length the page would have if finished now."""
        return len(self._buffer) - HEADER_BYTES + self._open_header_size() + self._trims_size()

    def add_group(
        self,
        source: str,
        first_seq: int,
        count: int,
        replayable_count: int,
        messages: bytes | bytearray | memoryview,
    ) -> None:
        """Copy a group of packed messages into the page.

        Raises ValueError on impossible counts, a name over NAME_BYTES_MAX, or when the body
        would exceed ``page_bytes_max`` (check ``body_bytes`` first).
        """
        if not 1 <= first_seq <= INT64_MAX:
            raise ValueError(f"first_seq {first_seq} outside 1..{INT64_MAX}")
        if not 1 <= count <= INT32_MAX:
            raise ValueError(f"count {count} outside 1..{INT32_MAX}")
        if not 0 <= replayable_count <= count:
            raise ValueError(f"replayable_count {replayable_count} outside 0..{count}")
        closed = len(messages) >= _CLOSED_GROUP_BYTES_MIN
        merges = (
            not closed
            and source == self._open_source
            and first_seq == self._open_first_seq + self._open_count
            and self._open_count + count <= INT32_MAX
        )
        added_bytes = len(messages)
        if not merges:
            source_bytes = _encode_name(source, "source name")
            added_bytes += self._group_header_size(
                source_bytes, first_seq, count, replayable_count, added_bytes
            )
        else:
            added_bytes += self._merged_header_growth(count, replayable_count, len(messages))
        if self.body_bytes + added_bytes > self.page_bytes_max:
            raise ValueError(
                f"page body would be {self.body_bytes + added_bytes} bytes, "
                f"limit {self.page_bytes_max}"
            )
        if merges:
            self._open_count += count
            self._open_replayable_count += replayable_count
        elif closed:
            # A large group is written whole, header first: everything in its header is
            # known now, and leaving it open would mean moving its bytes to insert the
            # header later (megabytes, when a page is filled by one busy peer's batches).
            self._close_open_group()
            self._buffer += _group_header(
                source_bytes, first_seq, count, replayable_count, len(messages)
            )
            self._buffer += messages
            self._closed_group_count += 1
            return
        else:
            self._close_open_group()
            self._open_source = source
            self._open_source_bytes = source_bytes
            self._open_first_seq = first_seq
            self._open_count = count
            self._open_replayable_count = replayable_count
            self._open_start = len(self._buffer)
        self._buffer += messages

    def add_trim(self, destination: str, seq: int) -> None:
        """Record that ``destination`` has durably logged our output up to ``seq``.

        Trim points only move forward; the highest one per destination is kept.
        """
        _encode_name(destination, "destination name")
        if not 0 <= seq <= INT64_MAX:
            raise ValueError(f"trim seq {seq} outside 0..{INT64_MAX}")
        previous = self._trims.get(destination)
        if previous is not None and seq <= previous:
            return
        self._trims[destination] = seq
        if self.body_bytes > self.page_bytes_max:
            if previous is None:
                del self._trims[destination]
            else:
                self._trims[destination] = previous
            raise ValueError(f"trim point would take the page body over {self.page_bytes_max}")

    def finish(self, *, instance_id: int, epoch: int, sequence: int) -> bytearray:
        """Return the complete page and reset the builder for the next page."""
        return seal_page(self.detach(instance_id=instance_id, epoch=epoch, sequence=sequence))

    def detach(self, *, instance_id: int, epoch: int, sequence: int) -> bytearray:
        """Hand over the page without its checksums and reset the builder.

        ``seal_page`` completes it. The split lets a caller hash a large page on another
        thread (the detached buffer is no longer touched by the builder) while this one
        keeps filling the next page.
        """
        if not 0 <= instance_id <= _UINT32_MAX:
            raise ValueError(f"instance_id {instance_id} is not a u32")
        if not 0 <= epoch <= _UINT64_MAX or not 0 <= sequence <= _UINT64_MAX:
            raise ValueError(f"epoch {epoch} / sequence {sequence} not u64")
        self._close_open_group()
        buffer = self._buffer
        buffer += encode_zigzag_int(len(self._trims))
        for destination, seq in self._trims.items():
            name = destination.encode("utf-8")
            buffer += encode_zigzag_int(len(name))
            buffer += name
            buffer += encode_zigzag_long(seq)
        body_length = len(buffer) - HEADER_BYTES
        # add_group and add_trim refuse anything that would break the limit.
        assert body_length <= self.page_bytes_max, (body_length, self.page_bytes_max)
        _HEADER_FIELDS.pack_into(
            buffer,
            0,
            MAGIC,
            FORMAT_VERSION,
            HEADER_BYTES,
            instance_id,
            epoch,
            sequence,
            body_length,
            self._closed_group_count,
            0,  # body checksum: seal_page
        )
        # Hand the buffer itself over (no copy of a page that may be megabytes) and
        # start the next page in a fresh one.
        self._buffer = bytearray(HEADER_BYTES)
        self.reset()
        return buffer

    def reset(self) -> None:
        """Drop everything added since the last finish."""
        del self._buffer[HEADER_BYTES:]
        self._trims.clear()
        self._closed_group_count = 0
        self._open_source = None
        self._open_source_bytes = b""
        self._open_count = 0
        self._open_start = HEADER_BYTES

    # The open group's header is only encoded when the group is closed.

    @staticmethod
    def _group_header_size(
        source_bytes: bytes, first_seq: int, count: int, replayable_count: int, length: int
    ) -> int:
        return (
            _zigzag_size(len(source_bytes), 32)
            + len(source_bytes)
            + _zigzag_size(first_seq, 64)
            + _zigzag_size(count, 32)
            + _zigzag_size(replayable_count, 32)
            + _zigzag_size(length, 32)
        )

    def _open_header_size(self) -> int:
        if self._open_source is None:
            return 0
        return self._group_header_size(
            self._open_source_bytes,
            self._open_first_seq,
            self._open_count,
            self._open_replayable_count,
            len(self._buffer) - self._open_start,
        )

    def _merged_header_growth(self, count: int, replayable_count: int, length: int) -> int:
        grown = self._group_header_size(
            self._open_source_bytes,
            self._open_first_seq,
            self._open_count + count,
            self._open_replayable_count + replayable_count,
            len(self._buffer) - self._open_start + length,
        )
        return grown - self._open_header_size()

    def _trims_size(self) -> int:
        size = _zigzag_size(len(self._trims), 32)
        for destination, seq in self._trims.items():
            name_length = len(destination.encode("utf-8"))
            size += _zigzag_size(name_length, 32) + name_length + _zigzag_size(seq, 64)
        return size

    def _close_open_group(self) -> None:
        if self._open_source is None:
            return
        self._buffer[self._open_start : self._open_start] = _group_header(
            self._open_source_bytes,
            self._open_first_seq,
            self._open_count,
            self._open_replayable_count,
            len(self._buffer) - self._open_start,
        )
        self._closed_group_count += 1
        self._open_source = None


def _group_header(
    source_bytes: bytes, first_seq: int, count: int, replayable_count: int, length: int
) -> bytes:
    return b"".join(
        (
            encode_zigzag_int(len(source_bytes)),
            source_bytes,
            encode_zigzag_long(first_seq),
            encode_zigzag_int(count),
            encode_zigzag_int(replayable_count),
            encode_zigzag_int(length),
        )
    )


# -- decoding --------------------------------------------------------------------------


def seal_page(page: bytearray) -> bytearray:
    """Write the body and header checksums of a page from ``PageBuilder.detach``.

    Pure and thread-safe on a detached page (xxhash releases the GIL while hashing).
    """
    with memoryview(page) as view:
        body_checksum = xxhash.xxh64_intdigest(view[HEADER_BYTES:])
    _BODY_CHECKSUM.pack_into(page, _BODY_CHECKSUM_OFFSET, body_checksum)
    with memoryview(page) as view:
        header_checksum = xxhash.xxh32_intdigest(view[:_HEADER_CHECKSUM_OFFSET])
    _HEADER_CHECKSUM.pack_into(page, _HEADER_CHECKSUM_OFFSET, header_checksum)
    return page


@dataclass(frozen=True, slots=True)
class _Header:
    instance_id: int
    epoch: int
    sequence: int
    body_length: int
    group_count: int


def _intact_frame(
    data: bytes | bytearray,
    offset: int,
    where: str,
    page_bytes_max: int,
    verify_body: bool = True,
) -> tuple[_Header | None, str]:
    """Check the frame of the page at offset.

    Returns (header, "") for an intact frame, (None, reason) for a broken one (a torn
    write candidate). Raises LogCorruptError for a header that verifies but states
    something a writer of this format never writes.
    """
    remaining = len(data) - offset
    if remaining < HEADER_BYTES:
        return None, f"short header: {remaining} bytes left, a header is {HEADER_BYTES}"
    fields = _HEADER_FIELDS.unpack_from(data, offset)
    magic, version, header_length, instance_id, epoch, sequence = fields[:6]
    body_length, group_count, body_checksum = fields[6:]
    if magic != MAGIC:
        return None, f"bad magic {magic!r}"
    (stored_header_checksum,) = _HEADER_CHECKSUM.unpack_from(data, offset + _HEADER_CHECKSUM_OFFSET)
    header_checksum = xxhash.xxh32_intdigest(data[offset : offset + _HEADER_CHECKSUM_OFFSET])
    if header_checksum != stored_header_checksum:
        return None, "header checksum mismatch"
    if version != FORMAT_VERSION or header_length != HEADER_BYTES:
        raise LogCorruptError(
            where, offset, f"unsupported format version {version} / header length {header_length}"
        )
    if body_length > page_bytes_max:
        raise LogCorruptError(
            where, offset, f"body length {body_length} over the limit of {page_bytes_max}"
        )
    body_start = offset + HEADER_BYTES
    if body_start + body_length > len(data):
        return None, (
            f"body of {body_length} bytes runs past the end of the data "
            f"({len(data) - body_start} bytes left)"
        )
    if verify_body:
        with memoryview(data) as view:
            checksum = xxhash.xxh64_intdigest(view[body_start : body_start + body_length])
        if checksum != body_checksum:
            return None, "body checksum mismatch"
    return _Header(instance_id, epoch, sequence, body_length, group_count), ""


def _decode_body(data: bytes | bytearray, offset: int, header: _Header, where: str) -> Page:
    body_start = offset + HEADER_BYTES
    body = memoryview(data)[body_start : body_start + header.body_length]
    position = 0
    groups: list[InputGroup] = []
    try:
        for _ in range(header.group_count):
            source, position = _read_name(body, position)
            first_seq, position = _read_zigzag(body, position, 64)
            count, position = _read_zigzag(body, position, 32)
            replayable_count, position = _read_zigzag(body, position, 32)
            length, position = _read_zigzag(body, position, 32)
            if first_seq < 1 or count < 1 or not 0 <= replayable_count <= count:
                raise _BodyError(
                    f"group from {source!r}: first_seq {first_seq}, count {count}, "
                    f"replayable {replayable_count}"
                )
            if length < 0 or position + length > len(body):
                raise _BodyError(f"group from {source!r}: {length} message bytes do not fit")
            messages = body[position : position + length]
            groups.append(InputGroup(source, first_seq, count, replayable_count, messages))
            position += length
        trim_count, position = _read_zigzag(body, position, 32)
        if trim_count < 0:
            raise _BodyError(f"trim count {trim_count}")
        trims: list[tuple[str, int]] = []
        for _ in range(trim_count):
            destination, position = _read_name(body, position)
            seq, position = _read_zigzag(body, position, 64)
            if seq < 0:
                raise _BodyError(f"trim seq {seq} for {destination!r}")
            trims.append((destination, seq))
        if position != len(body):
            raise _BodyError(f"{len(body) - position} bytes left over after the trims")
    except _BodyError as error:
        raise LogCorruptError(where, offset, f"malformed body: {error}") from error
    return Page(
        epoch=header.epoch,
        sequence=header.sequence,
        groups=tuple(groups),
        trims=tuple(trims),
        offset=offset,
        size_bytes=HEADER_BYTES + header.body_length,
        instance_id=header.instance_id,
    )


def decode_page(
    data: bytes | bytearray,
    offset: int = 0,
    where: str = "<bytes>",
    *,
    instance_id: int | None = None,
    page_bytes_max: int = PAGE_BYTES_MAX_DEFAULT,
    verify_body: bool = True,
) -> Page:
    """Decode the page at ``offset``; any defect raises LogCorruptError naming where/offset.

    ``verify_body=False`` skips only the body checksum, for a page whose checksum the
    caller has just computed from these very bytes (the committer's check of its own
    page); everything else is still decoded and checked.
    """
    header, reason = _intact_frame(data, offset, where, page_bytes_max, verify_body)
    if header is None:
        raise LogCorruptError(where, offset, reason)
    if instance_id is not None and header.instance_id != instance_id:
        raise LogCorruptError(
            where, offset, f"page of instance id {header.instance_id}, expected {instance_id}"
        )
    return _decode_body(data, offset, header, where)


def _is_intact_page(data: bytes, offset: int, instance_id: int, page_bytes_max: int) -> bool:
    try:
        header, _ = _intact_frame(data, offset, "", page_bytes_max)
    except LogCorruptError:
        # A header that verifies but is unacceptable still proves a whole page was
        # written here, after the broken one.
        return True
    return header is not None and header.instance_id == instance_id


def _find_intact_page(data: bytes, start: int, instance_id: int, page_bytes_max: int) -> int | None:
    position = data.find(MAGIC, start)
    while position != -1:
        if _is_intact_page(data, position, instance_id, page_bytes_max):
            return position
        position = data.find(MAGIC, position + 1)
    return None


def scan_chunk(
    data: bytes,
    *,
    where: str,
    instance_id: int,
    page_bytes_max: int = PAGE_BYTES_MAX_DEFAULT,
) -> ChunkScan:
    """Decode every page of a chunk, telling a torn tail from corruption (module doc)."""
    pages: list[Page] = []
    offset = 0
    previous: Page | None = None
    while offset < len(data):
        header, reason = _intact_frame(data, offset, where, page_bytes_max)
        if header is None:
            later = _find_intact_page(data, offset + 1, instance_id, page_bytes_max)
            if later is not None:
                raise LogCorruptError(
                    where, offset, f"{reason}, yet an intact page follows at offset {later}"
                )
            return ChunkScan(tuple(pages), offset, True, f"at offset {offset}: {reason}")
        if header.instance_id != instance_id:
            raise LogCorruptError(
                where, offset, f"page of instance id {header.instance_id}, expected {instance_id}"
            )
        if previous is not None:
            if header.sequence != previous.sequence + 1:
                raise LogCorruptError(
                    where,
                    offset,
                    f"page sequence {header.sequence} after {previous.sequence}",
                )
            if header.epoch < previous.epoch:
                raise LogCorruptError(
                    where, offset, f"epoch {header.epoch} after epoch {previous.epoch}"
                )
        previous = _decode_body(data, offset, header, where)
        pages.append(previous)
        offset = previous.end_offset
    return ChunkScan(tuple(pages), offset, False, None)


def check_sequence(
    chunks: Sequence[tuple[int, ChunkScan]], *, first_sequence: int | None = None
) -> int | None:
    """Audit scanned chunks, in order, as one log; returns the last good page's sequence.

    Raises LogGapError when a chunk number is skipped or a page sequence number does
    not continue the previous good page's, and LogCorruptError when an epoch goes
    down. A torn tail before a later chunk is fine: after recovery the next writer
    starts a new chunk that continues from the last good page. Empty chunks (created,
    nothing written yet) are fine anywhere. ``first_sequence``, when the caller knows
    it (0 for a log that starts at chunk 0; otherwise from the checkpoint the log
    starts at), is the sequence the first page must have: without it, losing every
    page before the first surviving one cannot be seen.
    """
    previous_chunk: int | None = None
    previous_page: Page | None = None
    previous_page_chunk = 0
    for chunk_number, scan in chunks:
        if previous_chunk is not None and chunk_number != previous_chunk + 1:
            raise LogGapError(
                f"chunk {chunk_number} follows chunk {previous_chunk}: "
                f"chunk(s) {previous_chunk + 1}..{chunk_number - 1} missing"
            )
        previous_chunk = chunk_number
        for page in scan.pages:
            if previous_page is None:
                if first_sequence is not None and page.sequence != first_sequence:
                    raise LogGapError(
                        f"the first page (chunk {chunk_number} offset {page.offset}) has "
                        f"sequence {page.sequence}, expected {first_sequence}"
                    )
            else:
                if page.sequence != previous_page.sequence + 1:
                    raise LogGapError(
                        f"page sequence {page.sequence} (chunk {chunk_number} offset "
                        f"{page.offset}) does not follow page {previous_page.sequence} "
                        f"(chunk {previous_page_chunk} offset {previous_page.offset})"
                    )
                if page.epoch < previous_page.epoch:
                    raise LogCorruptError(
                        f"chunk {chunk_number}",
                        page.offset,
                        f"epoch {page.epoch} after epoch {previous_page.epoch}",
                    )
            previous_page = page
            previous_page_chunk = chunk_number
    return None if previous_page is None else previous_page.sequence
