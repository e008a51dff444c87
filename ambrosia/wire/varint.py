"""Zig-zag varints: the integer encoding of every size and number on the wire.

Theory
------
A signed integer ``n`` is first *zig-zag* transformed so that small magnitudes, positive
or negative, become small unsigned numbers::

    int32:  u = (n << 1) ^ (n >> 31)        0 -> 0, -1 -> 1, 1 -> 2, -2 -> 3, ...
    int64:  u = (n << 1) ^ (n >> 63)

``u`` is then written little-endian in base 128, seven bits a byte, the high bit of each
byte set when more bytes follow (the Protocol Buffers varint). So ``ZigZagInt`` takes 1..5
bytes and ``ZigZagLong`` 1..10. Sizes travel this way too: a size of 3 is the byte ``06``.

Decoding rules, chosen so that a hostile or broken peer cannot make us read without end:

- a varint whose 5th (int) or 10th (long) byte still has the continuation bit set is
  refused with :class:`~ambrosia.errors.VarintTooLongError` as soon as that byte is seen,
  before any further byte is looked at;
- a last byte that carries bits beyond 32 (int) or 64 (long) is a
  :class:`~ambrosia.errors.ProtocolError` (the value cannot be an int32/int64);
- padded encodings (``80 00`` for 0) are accepted, as Protocol Buffers decoders do;
  encoders always write the shortest form;
- running out of input is *not* an error here: it raises :class:`Incomplete`, an internal
  signal that a streaming decoder turns into "need more bytes" and a decoder of a complete
  frame turns into a ProtocolError (the frame lied about its size).

The one-byte case is the hot path (almost every size, method id and count is below 64),
so it is served from precomputed tables before any loop runs.
"""

from __future__ import annotations

from typing import Final

from ambrosia.errors import ProtocolError, VarintTooLongError

__all__ = [
    "INT32_MAX",
    "INT32_MIN",
    "INT64_MAX",
    "INT64_MIN",
    "ZIGZAG_INT_BYTES_MAX",
    "ZIGZAG_LONG_BYTES_MAX",
    "BytesLike",
    "Incomplete",
    "decode_zigzag_int",
    "decode_zigzag_long",
    "encode_zigzag_int",
    "encode_zigzag_long",
    "zigzag_int_size",
]

BytesLike = bytes | bytearray | memoryview

INT32_MIN: Final = -(1 << 31)
INT32_MAX: Final = (1 << 31) - 1
INT64_MIN: Final = -(1 << 63)
INT64_MAX: Final = (1 << 63) - 1
ZIGZAG_INT_BYTES_MAX: Final = 5
ZIGZAG_LONG_BYTES_MAX: Final = 10


class Incomplete(Exception):
    """The input ends inside a varint (or a frame): feed more bytes and try again.

    Internal to the wire package: it never escapes a public decoder.
    """


# Byte b < 0x80 is a complete varint whose zig-zag decoded value is this table's entry.
_DECODE_ONE_BYTE: Final[tuple[int, ...]] = tuple((b >> 1) ^ -(b & 1) for b in range(128))
# Values -64..63 encode to one byte; index by value + 64.
_ENCODE_ONE_BYTE: Final[tuple[bytes, ...]] = tuple(
    bytes(((n << 1) ^ (n >> 63),)) for n in range(-64, 64)
)


def _decode_unsigned(data: BytesLike, offset: int, bytes_max: int) -> tuple[int, int]:
    """Read a base-128 varint of at most ``bytes_max`` bytes; return (value, new offset)."""
    result = 0
    shift = 0
    position = offset
    last_position = offset + bytes_max - 1
    while True:
        try:
            byte = data[position]
        except IndexError:
            raise Incomplete from None
        if byte < 0x80:
            result |= byte << shift
            return result, position + 1
        if position == last_position:
            # Refuse now: the byte after this one is never looked at.
            raise VarintTooLongError(bytes_max)
        result |= (byte & 0x7F) << shift
        shift += 7
        position += 1


def decode_zigzag_int(data: BytesLike, offset: int = 0) -> tuple[int, int]:
    """Decode a ZigZagInt at ``offset``; return ``(value, offset after it)``.

    Raises :class:`Incomplete` when ``data`` ends inside the varint,
    :class:`~ambrosia.errors.VarintTooLongError` past 5 bytes and
    :class:`~ambrosia.errors.ProtocolError` when the value does not fit in 32 bits.
    """
    try:
        byte = data[offset]
    except IndexError:
        raise Incomplete from None
    if byte < 0x80:
        return _DECODE_ONE_BYTE[byte], offset + 1
    unsigned, end = _decode_unsigned(data, offset, ZIGZAG_INT_BYTES_MAX)
    if unsigned >> 32:
        raise ProtocolError(f"ZigZagInt at offset {offset} does not fit in 32 bits")
    return (unsigned >> 1) ^ -(unsigned & 1), end


def decode_zigzag_long(data: BytesLike, offset: int = 0) -> tuple[int, int]:
    """Decode a ZigZagLong at ``offset``; return ``(value, offset after it)``.

    Same errors as :func:`decode_zigzag_int`, with limits of 10 bytes and 64 bits.
    """
    try:
        byte = data[offset]
    except IndexError:
        raise Incomplete from None
    if byte < 0x80:
        return _DECODE_ONE_BYTE[byte], offset + 1
    unsigned, end = _decode_unsigned(data, offset, ZIGZAG_LONG_BYTES_MAX)
    if unsigned >> 64:
        raise ProtocolError(f"ZigZagLong at offset {offset} does not fit in 64 bits")
    return (unsigned >> 1) ^ -(unsigned & 1), end


def _encode_unsigned(unsigned: int) -> bytes:
    out = bytearray()
    while unsigned >= 0x80:
        out.append((unsigned & 0x7F) | 0x80)
        unsigned >>= 7
    out.append(unsigned)
    return bytes(out)


def encode_zigzag_int(value: int) -> bytes:
    """Encode ``value`` as a ZigZagInt (1..5 bytes); ValueError outside int32."""
    if -64 <= value < 64:
        return _ENCODE_ONE_BYTE[value + 64]
    if not INT32_MIN <= value <= INT32_MAX:
        raise ValueError(f"{value} does not fit in a ZigZagInt (32-bit signed)")
    return _encode_unsigned(((value << 1) ^ (value >> 31)) & 0xFFFFFFFF)


def encode_zigzag_long(value: int) -> bytes:
    """Encode ``value`` as a ZigZagLong (1..10 bytes); ValueError outside int64."""
    if -64 <= value < 64:
        return _ENCODE_ONE_BYTE[value + 64]
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{value} does not fit in a ZigZagLong (64-bit signed)")
    return _encode_unsigned(((value << 1) ^ (value >> 63)) & 0xFFFFFFFFFFFFFFFF)


def zigzag_int_size(value: int) -> int:
    """How many bytes :func:`encode_zigzag_int` writes for ``value`` (no allocation)."""
    unsigned = ((value << 1) ^ (value >> 31)) & 0xFFFFFFFF
    return 1 + (unsigned.bit_length() - 1) // 7 if unsigned else 1
