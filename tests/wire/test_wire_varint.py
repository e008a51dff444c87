"""Zig-zag varints: round trips against an independent reference, limits, truncation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ambrosia.errors import ProtocolError, VarintTooLongError
from ambrosia.wire.varint import (
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    INT64_MIN,
    Incomplete,
    decode_zigzag_int,
    decode_zigzag_long,
    encode_zigzag_int,
    encode_zigzag_long,
    zigzag_int_size,
)


def reference_encode(value: int, bits: int) -> bytes:
    """Straight from the definition, one bit-twiddle at a time (slow, obvious)."""
    unsigned = (value * 2) if value >= 0 else (-value * 2 - 1)
    assert unsigned < (1 << bits)
    out = []
    while True:
        low = unsigned % 128
        unsigned //= 128
        if unsigned:
            out.append(low + 128)
        else:
            out.append(low)
            return bytes(out)


int32s = st.integers(INT32_MIN, INT32_MAX)
int64s = st.integers(INT64_MIN, INT64_MAX)
buffers = st.sampled_from([bytes, bytearray, memoryview])


@settings(max_examples=300)
@given(int32s, st.binary(max_size=3), st.binary(max_size=3), buffers)
def test_int_round_trip(value: int, before: bytes, after: bytes, kind: type) -> None:
    encoded = encode_zigzag_int(value)
    assert encoded == reference_encode(value, 32)
    assert 1 <= len(encoded) <= 5
    data = kind(before + encoded + after)
    assert decode_zigzag_int(data, len(before)) == (value, len(before) + len(encoded))


@settings(max_examples=200)
@given(int32s)
def test_int_size_predicts_the_encoding(value: int) -> None:
    assert zigzag_int_size(value) == len(encode_zigzag_int(value))


@settings(max_examples=300)
@given(int64s, st.binary(max_size=3), st.binary(max_size=3), buffers)
def test_long_round_trip(value: int, before: bytes, after: bytes, kind: type) -> None:
    encoded = encode_zigzag_long(value)
    assert encoded == reference_encode(value, 64)
    assert 1 <= len(encoded) <= 10
    data = kind(before + encoded + after)
    assert decode_zigzag_long(data, len(before)) == (value, len(before) + len(encoded))


@settings(max_examples=200)
@given(int64s)
def test_every_proper_prefix_is_incomplete(value: int) -> None:
    encoded = encode_zigzag_long(value)
    for cut in range(len(encoded)):
        with pytest.raises(Incomplete):
            decode_zigzag_long(encoded[:cut])
        if -(1 << 31) <= value < (1 << 31):
            with pytest.raises(Incomplete):
                decode_zigzag_int(encoded[:cut])


def test_every_small_value_uses_one_byte() -> None:
    for value in range(-64, 64):
        assert len(encode_zigzag_int(value)) == 1
        assert encode_zigzag_long(value) == encode_zigzag_int(value)
    assert len(encode_zigzag_int(64)) == len(encode_zigzag_int(-65)) == 2


def test_too_long_is_refused_without_looking_further() -> None:
    # Five continuation bytes and nothing after: the 6th byte is never needed.
    with pytest.raises(VarintTooLongError) as caught:
        decode_zigzag_int(b"\x80" * 5)
    assert caught.value.limit_bytes == 5
    with pytest.raises(VarintTooLongError) as caught:
        decode_zigzag_long(b"\xff" * 10)
    assert caught.value.limit_bytes == 10
    # One byte fewer is merely incomplete.
    with pytest.raises(Incomplete):
        decode_zigzag_int(b"\x80" * 4)
    with pytest.raises(Incomplete):
        decode_zigzag_long(b"\x80" * 9)


def test_values_beyond_the_width_are_protocol_errors() -> None:
    # 5th byte carries bit 32: a value no int32 has.
    with pytest.raises(ProtocolError) as caught:
        decode_zigzag_int(b"\xff\xff\xff\xff\x1f")
    assert not isinstance(caught.value, VarintTooLongError)
    # 10th byte carries bit 64.
    with pytest.raises(ProtocolError):
        decode_zigzag_long(b"\xff" * 9 + b"\x03")
    # The largest legal encodings decode to the extremes.
    assert decode_zigzag_int(b"\xff\xff\xff\xff\x0f") == (INT32_MIN, 5)
    assert decode_zigzag_long(b"\xff" * 9 + b"\x01") == (INT64_MIN, 10)


def test_padded_encodings_are_accepted() -> None:
    assert decode_zigzag_int(b"\x80\x00") == (0, 2)
    assert decode_zigzag_long(b"\x82\x80\x00") == (1, 3)


def test_empty_and_offset_past_end_are_incomplete() -> None:
    with pytest.raises(Incomplete):
        decode_zigzag_int(b"")
    with pytest.raises(Incomplete):
        decode_zigzag_long(b"\x02", 1)


@pytest.mark.parametrize("value", [INT32_MAX + 1, INT32_MIN - 1, 1 << 40])
def test_encode_int_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        encode_zigzag_int(value)


@pytest.mark.parametrize("value", [INT64_MAX + 1, INT64_MIN - 1])
def test_encode_long_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        encode_zigzag_long(value)
