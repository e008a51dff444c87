"""Streaming decoders (sans-IO, h11 style) and the log-record encoder.

Two kinds of byte stream cross the binding boundary and the network:

- a **message stream** (binding -> coordinator, coordinator <-> coordinator): messages
  framed as ``size: ZigZagInt``, ``type``, ``data`` (see :mod:`.messages`);
- a **log-record stream** (coordinator -> binding): records, each a 24-byte header and
  then messages packed back to back::

      offset  bytes  field                                            encoding
      0       4      committer id (constant for the instance's life)  IntFixed, LE signed
      4       4      size of the whole record, header included         IntFixed, LE signed
      8       8      check bytes: xxHash64, seed 0, over bytes 24..size LongFixed, LE
      16      8      record sequence id: log pages count up from 0;     LongFixed, LE signed
                     -1 a record the coordinator made up, -2 the
                     checkpoint record sent at recovery

  The check bytes cover the body only: the header's own fields are checked structurally
  (size bounds), and covering the body alone lets a coordinator forward a durable page's
  body and compute the header around it without touching the body twice.

Both streams may carry a checkpoint: a :class:`~.messages.CheckpointHeader` message (in a
record, it must be the record's last message) announces ``length`` raw bytes that follow
on the stream *outside* any frame. The decoders hand those out as :class:`CheckpointChunk`
events (as many as the input splits them into, never parsed, never counted against the
frame limit) and end with :class:`CheckpointComplete`, then go back to frames.

Usage::

    decoder = MessageDecoder(Direction.BINDING_TO_COORDINATOR)
    decoder.feed(data)                # any split of the stream, even one byte at a time
    for event in decoder:             # stops at NEED_DATA (or END_OF_STREAM after feed_eof)
        handle(event)

Guarantees:

- Only :class:`~ambrosia.errors.ProtocolError` (and subclasses) come out for bad input;
  after the first one the decoder is poisoned and every later ``feed``/``next_event``
  raises that same error again: a stream that was wrong once is never half-trusted.
- The size prefix is checked against ``frame_bytes_max`` as soon as its bytes are in,
  before the body is waited for, buffered or allocated (:class:`FrameTooLargeError`).
- Input is appended to one ``bytearray`` read through an offset; consumed bytes are
  dropped in bulk when they dominate the buffer, so the cost per byte stays constant
  whatever the split, and no Python loop runs over the bytes of a body.
- Returned events never reference the internal buffer (they own copies or views of
  immutable data), so the buffer can be compacted at any time.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, TypeAlias

import xxhash

from ambrosia.errors import FrameTooLargeError, ProtocolError
from ambrosia.wire.messages import (
    _DECODERS,
    CheckpointHeader,
    Direction,
    Message,
    _decode_body,
    _PackedIterator,
)
from ambrosia.wire.varint import (
    _DECODE_ONE_BYTE,
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    INT64_MIN,
    BytesLike,
    Incomplete,
)
from ambrosia.wire.varint import decode_zigzag_int as _decode_zigzag_int

__all__ = [
    "END_OF_STREAM",
    "FRAME_BYTES_MAX_DEFAULT",
    "NEED_DATA",
    "RECORD_HEADER_BYTES",
    "RECORD_SEQUENCE_CHECKPOINT",
    "RECORD_SEQUENCE_MADE_UP",
    "CheckpointChunk",
    "CheckpointComplete",
    "LogRecord",
    "LogRecordDecoder",
    "LogRecordEvent",
    "MessageDecoder",
    "MessageEvent",
    "StreamSignal",
    "decode_log_record",
    "encode_log_record",
    "encode_log_record_header",
    "log_record_header",
]

FRAME_BYTES_MAX_DEFAULT: Final = 64 * 1024 * 1024
RECORD_HEADER_BYTES: Final = 24
RECORD_SEQUENCE_MADE_UP: Final = -1
RECORD_SEQUENCE_CHECKPOINT: Final = -2

# Consumed bytes are dropped from the front of the buffer once there are at least this
# many of them and they are at least half of it: amortized O(1) per byte, bounded waste.
_COMPACT_BYTES_MIN: Final = 64 * 1024

_RECORD_HEADER: Final = struct.Struct("<iiQq")
_RECORD_SIZE_PREFIX: Final = struct.Struct("<ii")


class StreamSignal(enum.Enum):
    NEED_DATA = "need data"
    END_OF_STREAM = "end of stream"


NEED_DATA: Final = StreamSignal.NEED_DATA
"""No complete event is buffered: feed more bytes."""
END_OF_STREAM: Final = StreamSignal.END_OF_STREAM
"""``feed_eof`` was called and the stream ended cleanly at a frame boundary."""


@dataclass(frozen=True, slots=True)
class CheckpointChunk:
    """A piece of the raw checkpoint bytes announced by the last CheckpointHeader."""

    data: bytes


@dataclass(frozen=True, slots=True)
class CheckpointComplete:
    """All ``length`` checkpoint bytes have been delivered."""

    length: int


@dataclass(frozen=True, slots=True)
class LogRecord:
    committer_id: int
    sequence_id: int
    messages: tuple[Message, ...]


MessageEvent: TypeAlias = Message | CheckpointChunk | CheckpointComplete
LogRecordEvent: TypeAlias = LogRecord | CheckpointChunk | CheckpointComplete


class _StreamDecoder:
    """Buffer, poisoning, end of stream and raw checkpoint bytes: shared by both streams."""

    __slots__ = (
        "_buffer",
        "_checkpoint_length",
        "_checkpoint_remaining",
        "_eof",
        "_error",
        "_offset",
        "_view",
        "frame_bytes_max",
    )

    def __init__(self, frame_bytes_max: int) -> None:
        if not 1 <= frame_bytes_max <= INT32_MAX:
            raise ValueError(f"frame_bytes_max {frame_bytes_max} outside 1..{INT32_MAX}")
        self.frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()
        self._offset = 0
        # A view of _buffer, made when first needed and dropped before the buffer is
        # resized (a bytearray with live exports cannot be resized).
        self._view: memoryview | None = None
        self._eof = False
        self._error: ProtocolError | None = None
        self._checkpoint_remaining: int | None = None
        self._checkpoint_length = 0

    @property
    def buffered_bytes(self) -> int:
        """Bytes fed but not yet returned as events: for the caller's flow control."""
        return len(self._buffer) - self._offset

    @property
    def poisoned(self) -> bool:
        return self._error is not None

    def feed(self, data: BytesLike) -> None:
        """Append bytes of the stream, split anywhere."""
        self._raise_if_poisoned()
        if self._eof:
            raise RuntimeError("feed() after feed_eof()")
        if not data:
            return
        self._release_view()
        buffer = self._buffer
        if self._offset == len(buffer):
            buffer.clear()
            self._offset = 0
        elif self._offset >= _COMPACT_BYTES_MIN and self._offset * 2 >= len(buffer):
            del buffer[: self._offset]
            self._offset = 0
        buffer += data

    def feed_eof(self) -> None:
        """The stream has ended: ``next_event`` reports END_OF_STREAM or a truncation."""
        self._raise_if_poisoned()
        self._eof = True

    def _raise_if_poisoned(self) -> None:
        if self._error is not None:
            raise self._error.with_traceback(None)

    def _release_view(self) -> None:
        if self._view is not None:
            self._view.release()
            self._view = None

    def _get_view(self) -> memoryview:
        if self._view is None:
            self._view = memoryview(self._buffer)
        return self._view

    def _signal_incomplete(self) -> StreamSignal:
        """The buffer ends inside a frame: wait, unless the stream has ended."""
        if self._eof:
            raise ProtocolError(
                f"stream ended inside a frame ({self.buffered_bytes} bytes of it received)"
            )
        return NEED_DATA

    def _signal_boundary(self) -> StreamSignal:
        return END_OF_STREAM if self._eof else NEED_DATA

    def _begin_checkpoint(self, length: int) -> None:
        self._checkpoint_remaining = length
        self._checkpoint_length = length

    def _next_checkpoint_event(
        self, remaining: int
    ) -> CheckpointChunk | CheckpointComplete | StreamSignal:
        if remaining == 0:
            self._checkpoint_remaining = None
            return CheckpointComplete(self._checkpoint_length)
        available = len(self._buffer) - self._offset
        if available == 0:
            if self._eof:
                raise ProtocolError(f"stream ended with {remaining} checkpoint bytes missing")
            return NEED_DATA
        size = min(available, remaining)
        start = self._offset
        chunk = self._get_view()[start : start + size].tobytes()
        self._offset = start + size
        self._checkpoint_remaining = remaining - size
        return CheckpointChunk(chunk)

    def _poison(self, error: ProtocolError) -> None:
        self._error = error
        self._release_view()


class MessageDecoder(_StreamDecoder):
    """Decode a stream of size-prefixed messages spoken in ``direction``."""

    __slots__ = ("_decoders", "direction")

    def __init__(
        self, direction: Direction, *, frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT
    ) -> None:
        super().__init__(frame_bytes_max)
        self.direction = direction
        self._decoders = _DECODERS[direction]

    def next_event(self) -> MessageEvent | StreamSignal:
        """The next message or checkpoint event, NEED_DATA, or END_OF_STREAM."""
        self._raise_if_poisoned()
        try:
            if self._checkpoint_remaining is not None:
                return self._next_checkpoint_event(self._checkpoint_remaining)
            return self._next_message()
        except ProtocolError as error:
            self._poison(error)
            raise

    def __iter__(self) -> Iterator[MessageEvent]:
        """Every event that is complete now; stops at NEED_DATA or END_OF_STREAM."""
        while True:
            event = self.next_event()
            if isinstance(event, StreamSignal):
                return
            yield event

    def _next_message(self) -> Message | StreamSignal:
        buffer = self._buffer
        offset = self._offset
        if offset == len(buffer):
            return self._signal_boundary()
        first = buffer[offset]
        if first < 0x80:  # one-byte size: most messages
            size = _DECODE_ONE_BYTE[first]
            start = offset + 1
        else:
            try:
                size, start = _decode_zigzag_int(buffer, offset)
            except Incomplete:
                return self._signal_incomplete()
        if size <= 0:
            raise ProtocolError(f"message size {size} is not positive")
        if size > self.frame_bytes_max:
            raise FrameTooLargeError(size, self.frame_bytes_max)
        end = start + size
        if end > len(buffer):
            return self._signal_incomplete()
        view = self._view
        if view is None:
            view = self._view = memoryview(buffer)
        message = _decode_body(view[start:end], self._decoders, self.direction)
        self._offset = end
        if type(message) is CheckpointHeader:
            self._begin_checkpoint(message.length)
        return message


def _decode_record_at(
    view: memoryview, offset: int, record_bytes_max: int
) -> tuple[LogRecord, int]:
    """The record at ``offset`` and the offset after it; Incomplete if not all there."""
    if len(view) - offset < _RECORD_SIZE_PREFIX.size:
        raise Incomplete
    _, record_size = _RECORD_SIZE_PREFIX.unpack_from(view, offset)
    if record_size < RECORD_HEADER_BYTES:
        raise ProtocolError(f"log record size {record_size} is below the 24-byte header")
    if record_size > record_bytes_max:
        raise FrameTooLargeError(record_size, record_bytes_max)
    end = offset + record_size
    if end > len(view):
        raise Incomplete
    committer_id, _, check_bytes, sequence_id = _RECORD_HEADER.unpack_from(view, offset)
    body = view[offset + RECORD_HEADER_BYTES : end]
    actual = xxhash.xxh64_intdigest(body)
    if actual != check_bytes:
        raise ProtocolError(
            f"log record {sequence_id} fails its check bytes "
            f"(header {check_bytes:016x}, body hashes to {actual:016x})"
        )
    messages = tuple(_PackedIterator(body, 0, Direction.COORDINATOR_TO_BINDING))
    for message in messages[:-1]:
        if type(message) is CheckpointHeader:
            raise ProtocolError("a CheckpointHeader must be the last message of its record")
    return LogRecord(committer_id, sequence_id, messages), end


class LogRecordDecoder(_StreamDecoder):
    """Decode the coordinator -> binding stream of log records, verifying check bytes."""

    __slots__ = ()

    def __init__(self, *, frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT) -> None:
        super().__init__(frame_bytes_max)

    def next_event(self) -> LogRecordEvent | StreamSignal:
        """The next record or checkpoint event, NEED_DATA, or END_OF_STREAM."""
        self._raise_if_poisoned()
        try:
            if self._checkpoint_remaining is not None:
                return self._next_checkpoint_event(self._checkpoint_remaining)
            return self._next_record()
        except ProtocolError as error:
            self._poison(error)
            raise

    def __iter__(self) -> Iterator[LogRecordEvent]:
        """Every event that is complete now; stops at NEED_DATA or END_OF_STREAM."""
        while True:
            event = self.next_event()
            if isinstance(event, StreamSignal):
                return
            yield event

    def _next_record(self) -> LogRecord | StreamSignal:
        if self._offset == len(self._buffer):
            return self._signal_boundary()
        try:
            record, end = _decode_record_at(self._get_view(), self._offset, self.frame_bytes_max)
        except Incomplete:
            return self._signal_incomplete()
        self._offset = end
        if record.messages and type(last := record.messages[-1]) is CheckpointHeader:
            self._begin_checkpoint(last.length)
        return record


def decode_log_record(
    data: BytesLike, *, frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT
) -> LogRecord:
    """Decode exactly one complete log record filling all of ``data``."""
    view = memoryview(data)
    try:
        record, end = _decode_record_at(view, 0, frame_bytes_max)
    except Incomplete:
        raise ProtocolError(f"{len(view)} bytes do not hold a complete log record") from None
    if end != len(view):
        raise ProtocolError(f"{len(view) - end} bytes after the log record")
    return record


def encode_log_record_header(committer_id: int, sequence_id: int, body: BytesLike) -> bytes:
    """The 24-byte header for ``body`` (messages packed back to back).

    Separate from the body so a caller can send header and body without joining them.
    """
    return log_record_header(committer_id, sequence_id, len(body), xxhash.xxh64_intdigest(body))


def log_record_header(committer_id: int, sequence_id: int, body_bytes: int, check: int) -> bytes:
    """The 24-byte header of a body of ``body_bytes`` whose xxh64 is ``check`` (for a body
    sent in parts, hashed part by part)."""
    record_size = RECORD_HEADER_BYTES + body_bytes
    if record_size > INT32_MAX:
        raise ValueError(f"log record of {record_size} bytes exceeds the 32-bit size field")
    if not INT32_MIN <= committer_id <= INT32_MAX:
        raise ValueError(f"committer id {committer_id} does not fit in 32 bits")
    if not INT64_MIN <= sequence_id <= INT64_MAX:
        raise ValueError(f"sequence id {sequence_id} does not fit in 64 bits")
    return _RECORD_HEADER.pack(committer_id, record_size, check, sequence_id)


def encode_log_record(committer_id: int, sequence_id: int, body: BytesLike) -> bytes:
    """A complete log record: header, then ``body``."""
    return encode_log_record_header(committer_id, sequence_id, body) + bytes(body)
