"""What a peer's DataBatch must hold before any of it is logged (sans-IO).

A DataBatch's payload is copied into the log as it is and parsed only by the binding,
after it is durable. So whatever a peer puts there stays in the log for good: garbage
would be complained about on every replay, a wrong count would shift the sequence
numbers of every later call, a reserved method id would run system code. This module
checks a batch against the incoming-RPC layout (PROTOCOL.md) first:

- ``count`` messages exactly fill the payload, ``1 <= count`` and ``replayable == count``
  (impulses never cross a link: they are logged by the immortal that receives them);
- every message: size >= 4 and inside the payload, type 0;
- a call (reserved byte 0): method id >= 0 (negative ids are the system's, e.g. -1 the
  first-start call), kind 0 (async, followed by its call id, a ZigZagLong inside the
  message) or 1 (fork); kind 2 (impulse) never comes from a peer;
- a result (reserved byte 1): method id 0, kind 0, a call id and a status byte (0 value,
  1 error) inside the message.

Arguments are not looked at: the binding decodes them after logging and reports a bad
one deterministically (the same on every replay).

Cost: this runs on every batch a peer sends (16-byte calls at more than a million a
second), so the common batch is checked without a Python loop. Senders batch one shape
over and over (same size, same method, same kind); after the first message is parsed,
its head (size prefix through kind byte) and its length describe the whole batch, and
one compiled regular expression, ``(?:HEAD(?=call id).{rest})+``, checks every message
in C. A batch of mixed shapes falls back to a loop that reparses only when a message
does not start with the previous message's head. Patterns are cached per shape.
"""

from __future__ import annotations

import re
from typing import Final

from ambrosia.errors import ProtocolError
from ambrosia.wire.messages import (
    KIND_ASYNC,
    KIND_FORK,
    RESERVED_CALL,
    RESERVED_RESULT,
    TYPE_RPC,
)
from ambrosia.wire.varint import BytesLike, Incomplete, decode_zigzag_int, decode_zigzag_long

__all__ = ["check_batch"]

# Type, reserved byte, method id (>= 1 byte), kind.
_RPC_BYTES_MIN: Final = 4
# Below this many messages the single pass of the loop is cheaper than a pattern lookup.
_PATTERN_COUNT_MIN: Final = 4
_PATTERNS_MAX: Final = 256
# The pattern steps over a message's arguments byte by byte (in C): worth it for small
# messages only. Large ones are few per batch, and parsing each head costs far less.
_PATTERN_MESSAGE_BYTES_MAX: Final = 4096
# A ZigZagLong: up to 9 bytes with the high bit set, then one without; after 9 (63 bits)
# the last may carry only bit 63, as ``decode_zigzag_long`` (and so the binding) requires.
_VARINT_CONTINUATION: Final = b"[\x80-\xff]"
_VARINT_LAST: Final = b"[\x00-\x7f]"
_VARINT_TENTH: Final = b"[\x00\x01]"

_patterns: dict[tuple[bytes, int], re.Pattern[bytes]] = {}


def check_batch(payload: BytesLike, count: int, replayable_count: int) -> None:
    """Raise ProtocolError unless ``payload`` holds exactly ``count`` well-formed RPCs."""
    if count < 1:
        raise ProtocolError(f"batch count {count} is not positive")
    if replayable_count != count:
        raise ProtocolError(
            f"batch count {count} and replayable count {replayable_count} differ "
            "(impulses never come from a peer)"
        )
    end = len(payload)
    if count > end // (_RPC_BYTES_MIN + 1):
        raise ProtocolError(f"batch announces {count} messages in {end} bytes")
    try:
        first_stop, head_bytes, tail = _check_message(payload, 0, end)
        if (
            count >= _PATTERN_COUNT_MIN
            and first_stop * count == end
            and (first_stop <= _PATTERN_MESSAGE_BYTES_MAX)
        ):
            pattern = _pattern(bytes(payload[:head_bytes]), first_stop, tail)
            if pattern.fullmatch(payload) is not None:
                return
        found = _check_loop(payload, first_stop, head_bytes, tail, end)
    except Incomplete:
        raise ProtocolError("batch ends inside a message") from None
    if found != count:
        raise ProtocolError(f"batch announces {count} messages and holds {found}")


def _pattern(head: bytes, message_bytes: int, tail: bytes) -> re.Pattern[bytes]:
    key = (head + tail, message_bytes)
    pattern = _patterns.get(key)
    if pattern is None:
        if len(_patterns) >= _PATTERNS_MAX:
            _patterns.clear()  # a peer cycling shapes costs compiles, never memory
        rest = message_bytes - len(head)
        pattern = re.compile(b"(?:" + re.escape(head) + tail + b".{%d})+" % rest, re.DOTALL)
        _patterns[key] = pattern
    return pattern


def _call_id_lookahead(room: int, status: bool) -> bytes:
    """A lookahead for a call id (and a status byte) in the ``room`` bytes left."""
    continuation_max = min(9, room - 1 - status)
    call_id = _VARINT_CONTINUATION + b"{0,%d}" % min(8, continuation_max) + _VARINT_LAST
    if continuation_max == 9:
        call_id = b"(?:" + call_id + b"|" + _VARINT_CONTINUATION + b"{9}" + _VARINT_TENTH + b")"
    return b"(?=" + call_id + (b"[\x00\x01]" if status else b"") + b")"


def _check_message(data: BytesLike, position: int, end: int) -> tuple[int, int, bytes]:
    """Check one message; return (its end, its head length, the pattern's lookahead)."""
    size, start = decode_zigzag_int(data, position)
    stop = start + size
    if size < _RPC_BYTES_MIN or stop > end:
        raise ProtocolError(f"message at byte {position} has size {size}, outside the batch")
    if data[start] != TYPE_RPC:
        raise ProtocolError(f"message at byte {position} has type {data[start]}, not an RPC")
    reserved = data[start + 1]
    method_id, cursor = decode_zigzag_int(data, start + 2)
    if cursor >= stop:
        raise ProtocolError(f"message at byte {position} ends inside its head")
    kind = data[cursor]
    cursor += 1
    if reserved == RESERVED_CALL:
        if method_id < 0:
            raise ProtocolError(f"call at byte {position} names reserved method id {method_id}")
        if kind == KIND_FORK:
            return stop, cursor - position, b""
        if kind != KIND_ASYNC:
            raise ProtocolError(f"call at byte {position} has kind {kind} (not async or fork)")
        _, after = decode_zigzag_long(data, cursor)
        if after > stop:
            raise ProtocolError(f"async call at byte {position} ends inside its call id")
        return stop, cursor - position, _call_id_lookahead(stop - cursor, False)
    if reserved != RESERVED_RESULT:
        raise ProtocolError(f"message at byte {position} has reserved byte {reserved}")
    if method_id != 0 or kind != KIND_ASYNC:
        raise ProtocolError(f"result at byte {position} has method {method_id}, kind {kind}")
    _, after = decode_zigzag_long(data, cursor)
    if after >= stop or data[after] > 1:
        raise ProtocolError(f"result at byte {position} has no call id and status")
    return stop, cursor - position, _call_id_lookahead(stop - cursor, True)


def _check_loop(data: BytesLike, position: int, head_bytes: int, tail: bytes, end: int) -> int:
    """Check the messages after the first (which ends at ``position``); count them all."""
    found = 1
    # A fork with the previous fork's head has its size and target: no parse needed.
    previous_head = b"" if tail else bytes(data[:head_bytes])
    previous_size = 0 if tail else position
    startswith = data.startswith if isinstance(data, bytes) else None
    while position < end:
        if (
            startswith is not None
            and previous_size
            and startswith(previous_head, position)
            and position + previous_size <= end
        ):
            position += previous_size
        else:
            stop, head_bytes, tail = _check_message(data, position, end)
            if not tail:
                previous_head = bytes(data[position : position + head_bytes])
                previous_size = stop - position
            else:
                previous_size = 0
            position = stop
        found += 1
    return found
