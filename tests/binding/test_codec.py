"""RPC argument and result encoding: exact round trips, the raw fast path, typed errors."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ambrosia.binding import codec
from ambrosia.binding import state as state_codec
from ambrosia.binding.immortal import (
    Immortal,
    Proxy,
    immortal_type_path,
    lookup_immortal_class,
    rpc,
)
from ambrosia.binding.state import register_type
from ambrosia.errors import BindingError, ProtocolError, StateSerializationError


@register_type(name="tests.binding.codec.Point")
@dataclass(frozen=True, slots=True)
class Point:
    x: int
    y: float
    label: str


@register_type(name="tests.binding.codec.Order")
@dataclass
class Order:
    lines: list[tuple[str, int]]
    attachment: bytes
    placed: datetime
    where: Point


@dataclass
class Unregistered:
    value: int


class CodecTarget(Immortal):
    @rpc
    def ping(self) -> None: ...


def no_proxies(type_path: str, name: str) -> object:
    raise AssertionError("no proxy expected")


def round_trip(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return codec.decode_args(codec.encode_args(args), no_proxies)


def same(left: object, right: object) -> bool:
    """Equality that also checks types all the way down (1 == 1.0 == True otherwise)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, float):
        assert isinstance(right, float)
        return math.copysign(1, left) == math.copysign(1, right) and (
            left == right or (math.isnan(left) and math.isnan(right))
        )
    if isinstance(left, (list, tuple)):
        assert isinstance(right, (list, tuple))
        return len(left) == len(right) and all(same(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, dict):
        assert isinstance(right, dict)
        return list(left) == list(right) and all(same(left[k], right[k]) for k in left)
    return left == right


# -- tags ----------------------------------------------------------------------------------


def test_json_scalars_take_the_json_tag() -> None:
    args = (None, True, False, 0, -1, 2**63 - 1, -(2**63), 1.5, -0.0, "", "héllo ✓")
    encoded = codec.encode_args(args)
    assert encoded[0] == codec.TAG_JSON
    assert orjson.loads(encoded[1:]) == list(args)
    assert same(round_trip(args), args)
    assert codec.encode_args(())[0] == codec.TAG_JSON and round_trip(()) == ()


def test_anything_else_takes_the_state_tag_and_keeps_its_type() -> None:
    for args in [
        (2**63,),  # beyond 64 bits
        (-(2**63) - 1,),
        ((1, 2),),
        ([1, (2, b"\x00\xff")],),
        ({"a": b"bytes inside", "b": {1, 2}},),
        (datetime(2024, 2, 29, 12, 30, 1, 5, tzinfo=UTC),),
        (datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=-3))),),
        (b"one", b"two"),  # two bytes arguments: not the raw fast path
        (bytearray(b"ba"),),
        (Point(1, 2.5, "p"),),
        (Order([("apple", 3)], b"\x00\x01", datetime(2020, 5, 17, 8, 0), Point(0, -1.0, "")),),
    ]:
        encoded = codec.encode_args(args)
        assert encoded[0] == codec.TAG_STATE, args
        decoded = round_trip(args)
        assert type(decoded) is tuple
        assert decoded == args
        assert [type(value) for value in decoded] == [type(value) for value in args]


def test_state_encoded_structures_keep_nested_types() -> None:
    value = {"t": (1, (2, [3])), "b": [b"x", bytearray(b"y")], "when": [datetime(1999, 12, 31)]}
    (decoded,) = round_trip((value,))
    assert type(decoded["t"]) is tuple and type(decoded["t"][1]) is tuple
    assert type(decoded["t"][1][1]) is list
    assert type(decoded["b"][0]) is bytes and type(decoded["b"][1]) is bytearray
    assert decoded == value


def test_unregistered_dataclass_is_refused_on_encode() -> None:
    with pytest.raises(StateSerializationError):
        codec.encode_args((Unregistered(1),))


def test_raw_bytes_argument_is_the_message_itself() -> None:
    payload = bytes(range(256)) * 3
    data = bytes([codec.TAG_RAW]) + payload
    (decoded,) = codec.decode_args(data, no_proxies)
    assert decoded == payload
    assert codec.decode_args(b"\x00", no_proxies) == (b"",)


def test_values_round_trip() -> None:
    for value in [None, 7, "s", 2.25, b"raw result", (1, 2), [b"x"], Point(3, 0.5, "q"), 2**80]:
        encoded = codec.encode_value(value)
        decoded = codec.decode_value(encoded, no_proxies)
        assert decoded == value and type(decoded) is type(value)
    # A bytes result travels raw: no encoding at all.
    assert codec.encode_value(b"abc") == b"\x00abc"


def test_proxies_travel_as_state_and_are_rebuilt_by_the_resolver() -> None:
    seen: list[tuple[str, str]] = []

    def resolve(type_path: str, name: str) -> object:
        seen.append((type_path, name))
        return Proxy(lookup_immortal_class(type_path), name, None)

    proxy = Proxy(CodecTarget, "target-7", None)
    (decoded,) = codec.decode_args(codec.encode_args((proxy,)), resolve)
    assert seen == [(immortal_type_path(CodecTarget), "target-7")]
    assert decoded == proxy


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet=st.characters(exclude_categories=["Cs"])),
)
state_values = st.recursive(
    scalars | st.binary(max_size=20) | st.integers() | st.datetimes(),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=4), inner, max_size=3)
        | st.builds(Point, st.integers(), st.floats(allow_nan=False), st.text(max_size=4))
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(scalars, max_size=6).map(tuple))
def test_json_scalar_arguments_round_trip_exactly(args: tuple[Any, ...]) -> None:
    assert codec.encode_args(args)[0] == codec.TAG_JSON
    assert same(round_trip(args), args)


@settings(max_examples=300, deadline=None)
@given(st.lists(state_values, max_size=4).map(tuple))
def test_any_supported_arguments_round_trip_exactly(args: tuple[Any, ...]) -> None:
    decoded = round_trip(args)
    assert same(decoded, args)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_raw_payloads_round_trip(payload: bytes) -> None:
    assert codec.decode_value(codec.encode_value(payload), no_proxies) == payload


# -- malformed input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",  # no tag
        b"\x03[]",  # unknown tags
        b"\x7f",
        b"\xff[1]",
        b"\x01[1,",  # bad JSON
        b"\x01",
        b'\x01{"a":1}',  # JSON that is not an array
        b"\x011",
    ],
)
def test_malformed_arguments_raise_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        codec.decode_args(data, no_proxies)


def test_state_arguments_that_are_not_a_tuple_raise_protocol_error() -> None:
    # A list (not the tuple of arguments) under the state tag.
    with pytest.raises(ProtocolError):
        codec.decode_args(b"\x02" + state_codec.dumps([1, 2]), no_proxies)
    assert codec.decode_args(codec.encode_args(([1, 2],)), no_proxies) == ([1, 2],)


def test_garbage_state_bytes_raise_a_binding_error() -> None:
    for data in [b"\x02", b"\x02\x01", b"\x02\x01\x0a\x05", b"\x02\x09\x00"]:
        with pytest.raises((ProtocolError, BindingError)):
            codec.decode_args(data, no_proxies)


def test_a_result_carries_exactly_one_value() -> None:
    with pytest.raises(ProtocolError):
        codec.decode_value(codec.encode_args((1, 2)), no_proxies)
    with pytest.raises(ProtocolError):
        codec.decode_value(codec.encode_args(()), no_proxies)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40))
def test_random_bytes_decode_or_raise_a_typed_error(data: bytes) -> None:
    try:
        decoded = codec.decode_args(data, no_proxies)
    except (ProtocolError, BindingError):
        return
    assert type(decoded) is tuple


# -- known gaps (the binding must fix them; the tests show the intended behaviour) -----------


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_floats_round_trip(value: float) -> None:
    assert same(round_trip((value,)), (value,))


def test_lone_surrogate_strings_round_trip() -> None:
    assert round_trip(("\ud800",)) == ("\ud800",)
