"""How arguments and return values travel inside an RPC message.

The coordinator never looks inside; only bindings do. Layout of the ``args`` part of an
incoming RPC (PROTOCOL.md type 0):

- fork and impulse calls: ``tag`` then the encoded arguments;
- async calls: ``call id`` (ZigZagLong) then ``tag`` and the arguments, so the callee can
  address its result;
- results (the RPC's reserved byte is 1): ``call id`` (ZigZagLong), ``status`` (1 byte:
  0 = value, 1 = the handler raised), ``tag`` and the encoded value (for errors: a JSON
  array ``[type name, message]``).

Tags, chosen by the caller for each call:

- ``0x00`` RAW: exactly one positional argument of type ``bytes``; the rest of the message
  IS that argument. No encoding, no copy beyond the one into the outgoing batch: the fast
  path for payload-carrying calls.
- ``0x01`` JSON: every argument is a JSON scalar (None, bool, int that fits 64 bits,
  float, str); orjson array. Exact round trip for those types.
- ``0x02`` STATE: anything else, through the checkpoint state codec (``state.py``):
  tuples stay tuples, bytes inside structures, datetimes, dataclasses, proxies.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import orjson

import ambrosia.binding.state as state_codec
from ambrosia.errors import ProtocolError

TAG_RAW = 0
TAG_JSON = 1
TAG_STATE = 2

_JSON_SCALARS = frozenset({type(None), bool, int, float, str})
_INT64_MAX = (1 << 63) - 1
_INT64_MIN = -(1 << 63)

_RAW_PREFIX = b"\x00"

ProxyResolver = Callable[[str, str], object]


def _json_safe(values: tuple[Any, ...]) -> bool:
    for value in values:
        kind = type(value)
        if kind not in _JSON_SCALARS:
            return False
        if kind is int and not _INT64_MIN <= value <= _INT64_MAX:
            return False
        if kind is float and not math.isfinite(value):
            return False  # JSON has no NaN or infinities (orjson would write null)
    return True


def encode_args(args: tuple[Any, ...]) -> bytes:
    """Tag and encode positional arguments (the RAW case is handled by the caller)."""
    if _json_safe(args):
        try:
            encoded: bytes = orjson.dumps(args)
        except orjson.JSONEncodeError:
            pass  # e.g. a string with a lone surrogate: the state codec keeps it
        else:
            return b"\x01" + encoded
    return b"\x02" + state_codec.dumps(args)


def encode_value(value: object) -> bytes:
    """Tag and encode one value (a handler's result)."""
    if type(value) is bytes:
        return _RAW_PREFIX + value
    return encode_args((value,))


def decode_args(data: bytes, resolve_proxy: ProxyResolver) -> tuple[Any, ...]:
    """Decode tagged arguments; ``data`` starts at the tag byte."""
    if not data:
        raise ProtocolError("RPC arguments are empty: the tag byte is missing")
    tag = data[0]
    if tag == TAG_RAW:
        return (data[1:],)
    if tag == TAG_JSON:
        try:
            decoded = orjson.loads(data[1:])
        except orjson.JSONDecodeError as error:
            raise ProtocolError(f"RPC arguments are not valid JSON: {error}") from error
        if not isinstance(decoded, list):
            raise ProtocolError("RPC JSON arguments must be an array")
        return tuple(decoded)
    if tag == TAG_STATE:
        decoded = state_codec.loads(data[1:], resolve_proxy=resolve_proxy)
        if not isinstance(decoded, tuple):
            raise ProtocolError("RPC state-encoded arguments must be a tuple")
        return decoded
    raise ProtocolError(f"unknown RPC argument tag {tag}")


def decode_value(data: bytes, resolve_proxy: ProxyResolver) -> object:
    values = decode_args(data, resolve_proxy)
    if len(values) != 1:
        raise ProtocolError(f"a result carries one value, not {len(values)}")
    return values[0]
