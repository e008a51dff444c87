"""``check_batch`` (ambrosia.protocol.batch) on its own, without an event loop.

Every rule of its docstring is shown accepted and refused with the message that names
it; batches are built with the binding's own encoders (the framing of
``Dispatcher.call_fork``, ``call_async`` and ``_send_result``). A reference parser
written here from the docstring is the oracle: ``check_batch`` accepts a payload exactly
when the reference finds ``count`` well-formed messages in it, whichever of its two paths
(the pattern for uniform batches of small messages, the loop for the rest) decides.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ambrosia.binding import codec
from ambrosia.binding.dispatcher import frame_prefix, rpc_header
from ambrosia.errors import ProtocolError
from ambrosia.protocol import batch
from ambrosia.protocol.batch import check_batch
from ambrosia.wire.messages import KIND_ASYNC, KIND_FORK, KIND_IMPULSE, RESERVED_RESULT
from ambrosia.wire.varint import (
    BytesLike,
    Incomplete,
    decode_zigzag_int,
    decode_zigzag_long,
    encode_zigzag_int,
    encode_zigzag_long,
)

# -- the binding's framing ------------------------------------------------------------


def _framed(header: bytes, body: bytes) -> bytes:
    return frame_prefix(len(header) + len(body)) + header + body


def fork(method_id: int, raw: bytes | None = None, args: tuple[object, ...] = ()) -> bytes:
    """As ``Dispatcher.call_fork``: one raw bytes argument, or encoded arguments."""
    if raw is not None:
        return _framed(rpc_header(method_id, KIND_FORK) + b"\x00", raw)
    return _framed(rpc_header(method_id, KIND_FORK), codec.encode_args(args))


def call(
    method_id: int, call_id: int, raw: bytes | None = None, args: tuple[object, ...] = ()
) -> bytes:
    """As ``Dispatcher.call_async``."""
    arguments = b"\x00" + raw if raw is not None else codec.encode_args(args)
    return _framed(rpc_header(method_id, KIND_ASYNC), encode_zigzag_long(call_id) + arguments)


def result(call_id: int, value: object = None, error: tuple[str, str] | None = None) -> bytes:
    """As ``Dispatcher._send_result``: status 0 and the value, or 1 and the error."""
    if error is None:
        body = encode_zigzag_long(call_id) + b"\x00" + codec.encode_value(value)
    else:
        body = encode_zigzag_long(call_id) + b"\x01" + codec.encode_args(error)
    return _framed(rpc_header(0, KIND_ASYNC, RESERVED_RESULT), body)


def message(body: bytes) -> bytes:
    """Any type + data, framed with its size (for hand-made malformed messages)."""
    return encode_zigzag_int(len(body)) + body


# -- the oracle ------------------------------------------------------------------------


def reference_count(payload: BytesLike) -> int | None:
    """How many well-formed incoming RPCs exactly fill ``payload``; None if they do not."""
    data = bytes(payload)
    position = 0
    found = 0
    try:
        while position < len(data):
            size, start = decode_zigzag_int(data, position)
            stop = start + size
            if size < 4 or stop > len(data) or data[start] != 0:
                return None
            reserved = data[start + 1]
            method_id, cursor = decode_zigzag_int(data, start + 2)
            if cursor >= stop:
                return None
            kind = data[cursor]
            cursor += 1
            if reserved == 0 and method_id >= 0 and kind == KIND_FORK:
                pass
            elif reserved == 0 and method_id >= 0 and kind == KIND_ASYNC:
                _, after = decode_zigzag_long(data, cursor)
                if after > stop:
                    return None
            elif reserved == 1 and method_id == 0 and kind == KIND_ASYNC:
                _, after = decode_zigzag_long(data, cursor)
                if after >= stop or data[after] > 1:
                    return None
            else:
                return None
            position = stop
            found += 1
    except (Incomplete, ProtocolError):
        return None
    return found


def verdict(payload: BytesLike, count: int) -> bool:
    """check_batch's answer: True (accepted) or False (ProtocolError, nothing else)."""
    try:
        check_batch(payload, count, count)
    except ProtocolError:
        return False
    return True


def pattern_accepts(payload: bytes, count: int) -> bool | None:
    """What the fast path alone says of ``payload`` (None: it does not apply).

    Built exactly as ``check_batch`` builds it: from the first message's shape.
    """
    try:
        first_stop, head_bytes, tail = batch._check_message(payload, 0, len(payload))
    except (ProtocolError, Incomplete):
        return None
    if (
        count < batch._PATTERN_COUNT_MIN
        or first_stop * count != len(payload)
        or first_stop > batch._PATTERN_MESSAGE_BYTES_MAX
    ):
        return None
    pattern = batch._pattern(payload[:head_bytes], first_stop, tail)
    return pattern.fullmatch(payload) is not None


def refused(payload: bytes, count: int, replayable: int | None = None) -> str:
    with pytest.raises(ProtocolError) as caught:
        check_batch(payload, count, count if replayable is None else replayable)
    return str(caught.value)


# -- every rule, accepted and refused --------------------------------------------------

LARGE = b"L" * 5000  # over the pattern's 4 KiB message limit: always the loop


@pytest.mark.parametrize("as_view", [False, True], ids=["bytes", "memoryview"])
@pytest.mark.parametrize(
    "messages",
    [
        [fork(3, args=(1, "a"))],
        [fork(3, raw=b"abc")] * 4,  # uniform forks: the pattern
        [call(7, n, args=(n,)) for n in range(1, 9)],  # uniform calls, call ids vary
        [result(n, value=n * 3) for n in range(1, 6)],
        [result(1, error=("ValueError", "no")), result(2, value="x")],
        [fork(0), call(8000, 1 << 40), result(1 << 62, value=[1, 2])],  # mixed: the loop
        [call(5, 2**63 - 1, raw=b"")] * 4,  # a ten-byte call id
        [fork(2**31 - 1, raw=b"")] * 4,  # a five-byte method id
        [fork(1, raw=LARGE)] * 4,  # large: the loop although uniform
        [call(1, 9, raw=LARGE), fork(1, raw=b"")],
        [fork(1, raw=b"m" * 20000)],  # a three-byte size prefix
    ],
    ids=[
        "one-fork",
        "uniform-forks",
        "uniform-calls",
        "results",
        "error-result",
        "mixed",
        "long-call-id",
        "long-method-id",
        "large-uniform",
        "large-mixed",
        "three-byte-size",
    ],
)
def test_what_the_binding_sends_is_accepted(messages: list[bytes], as_view: bool) -> None:
    payload = b"".join(messages)
    assert reference_count(payload) == len(messages)
    check_batch(memoryview(payload) if as_view else payload, len(messages), len(messages))


def test_counts() -> None:
    uniform = fork(3, raw=b"abc") * 4
    assert "count 0 is not positive" in refused(uniform, 0)
    assert "count -1 is not positive" in refused(uniform, -1)
    assert "replayable count 3 differ" in refused(uniform, 4, 3)
    assert "impulses never come from a peer" in refused(uniform, 4, 5)
    # More messages than the bytes could hold (each takes at least 5): refused up front.
    assert "announces 7 messages in 28 bytes" in refused(uniform[:28], 7)


@pytest.mark.parametrize(
    "messages",
    [
        [fork(3, raw=b"abc")] * 6,  # uniform: the pattern is tried first
        [call(3, n, raw=b"abc") for n in range(1, 7)],
        [fork(1, raw=LARGE)] * 6,  # uniform but large: the loop
        [fork(1), call(2, 5), result(5, 1), fork(1, raw=b"xy"), call(2, 6), result(6, 2)],
    ],
    ids=["uniform-forks", "uniform-calls", "large", "mixed"],
)
def test_a_count_off_by_one_either_way_is_refused(messages: list[bytes]) -> None:
    payload = b"".join(messages)
    assert "announces 7 messages and holds 6" in refused(payload, 7)
    assert "announces 5 messages and holds 6" in refused(payload, 5)
    check_batch(payload, 6, 6)


def test_a_batch_that_ends_inside_a_message_is_refused() -> None:
    whole = fork(3, raw=b"abc") * 4
    assert "ends inside a message" in refused(whole + b"\x80", 4)  # inside a size varint
    assert "outside the batch" in refused(whole[:-1], 4)  # inside a body
    big = fork(1, raw=b"m" * 20000)
    # Inside a three-byte size prefix.
    assert "ends inside a message" in refused(fork(3, raw=b"abc") * 2 + big[:2], 3)


@pytest.mark.parametrize(
    ("bad", "phrase"),
    [
        (message(b"\x00\x00\x02"), "has size 3, outside the batch"),
        (encode_zigzag_int(40) + b"\x00\x00\x02\x01", "has size 40, outside the batch"),
        (message(b"\x05\x00\x02\x01"), "has type 5, not an RPC"),
        (message(b"\x00\x02\x02\x01"), "has reserved byte 2"),
        (message(b"\x00\xff\x02\x01"), "has reserved byte 255"),
        # A method id whose varint runs to the end of the message: no room for a kind.
        (message(b"\x00\x00\x80\x01"), "ends inside its head"),
        (fork(-1), "names reserved method id -1"),  # the first-start call
        (call(-5, 1), "names reserved method id -5"),
        (_framed(rpc_header(3, KIND_IMPULSE), codec.encode_args(())), "has kind 2"),
        (message(b"\x00\x00\x02\x07"), "has kind 7"),
        (message(b"\x00\x00\x02\x00"), "ends inside its call id"),  # async, no call id
        (message(b"\x00\x00\x02\x00\x80"), "ends inside its call id"),
        (_framed(rpc_header(1, KIND_ASYNC, RESERVED_RESULT), b"\x02\x00"), "has method 1"),
        (_framed(rpc_header(0, KIND_FORK, RESERVED_RESULT), b"\x02\x00"), "kind 1"),
        (_framed(rpc_header(0, KIND_ASYNC, RESERVED_RESULT), b"\x02"), "no call id and status"),
        (_framed(rpc_header(0, KIND_ASYNC, RESERVED_RESULT), b"\x02\x02"), "no call id and sta"),
        (_framed(rpc_header(0, KIND_ASYNC, RESERVED_RESULT), b"\x80\x80"), "no call id and sta"),
    ],
)
@pytest.mark.parametrize("where", ["first", "first-of-uniform", "after-others"])
def test_every_message_rule(bad: bytes, phrase: str, where: str) -> None:
    good = fork(4, raw=b"ok")
    # Well-formed messages after a short bad one keep the count within what the bytes
    # could hold (5 bytes a message at least), so the message rule is what refuses.
    if where == "first":
        payload, count, offset = bad + good * 2, 3, 0
    elif where == "first-of-uniform":
        # The shape of a refused first message never becomes a pattern.
        padding = good * 2 if len(bad) < 5 else b""
        payload, count, offset = bad * 4 + padding, 4 + len(padding) // len(good), 0
    else:
        before = good + call(4, 1, raw=b"ok") + result(9, 1)
        payload, count, offset = before + bad + good, 5, len(before)
    assert reference_count(payload) is None
    text = refused(payload, count)
    assert phrase in text
    if "ends inside a message" not in text:
        assert f"at byte {offset} " in text


def test_a_call_id_beyond_64_bits_is_refused_on_both_paths() -> None:
    """The binding cannot decode such a call id: logged, it would fail on every replay."""
    overflow = b"\xff" * 9 + b"\x7f"  # ten bytes whose value needs 70 bits
    for header, tail in (
        (rpc_header(2, KIND_ASYNC), b"\x00"),
        (rpc_header(0, KIND_ASYNC, RESERVED_RESULT), b"\x00\x00"),
    ):
        one = _framed(header, overflow + tail)
        largest = _framed(header, encode_zigzag_long(2**63 - 1) + tail)  # same shape
        assert len(largest) == len(one)
        assert reference_count(one) is None
        assert not verdict(one, 1)  # the loop
        # Uniform and small, the first message fine: the pattern decides the rest.
        uniform = largest * 3 + one
        assert reference_count(uniform) is None
        assert pattern_accepts(uniform, 4) is False
        assert not verdict(uniform, 4)
    # The largest call id the binding can produce still passes both ways.
    largest = call(2, 2**63 - 1, raw=b"")
    assert verdict(largest, 1) and verdict(largest * 4, 4)
    assert pattern_accepts(largest * 4, 4)


def test_the_pattern_cache_stays_bounded() -> None:
    for method_id in range(batch._PATTERNS_MAX + 10):
        check_batch(fork(method_id, raw=b"") * 4, 4, 4)
        assert len(batch._patterns) <= batch._PATTERNS_MAX


# -- properties ------------------------------------------------------------------------

_RAW_SIZES = [0, 1, 7, 120, 4000, 4100, 9000]
method_ids = st.one_of(st.integers(0, 63), st.integers(0, 2**31 - 1))
call_ids = st.one_of(st.integers(1, 63), st.integers(1, 2**63 - 1))
raw_arguments = st.builds(
    lambda size, fill: bytes([fill]) * size, st.sampled_from(_RAW_SIZES), st.integers(0, 255)
)
values = st.one_of(st.integers(-(2**70), 2**70), st.text(max_size=20), st.none())
encoded = st.one_of(
    raw_arguments.map(lambda raw: ("raw", raw)),
    st.lists(values, max_size=3).map(lambda args: ("args", tuple(args))),
)


def _fork_from(method_id: int, arguments: tuple[str, object]) -> bytes:
    kind, value = arguments
    if kind == "raw":
        assert isinstance(value, bytes)
        return fork(method_id, raw=value)
    assert isinstance(value, tuple)
    return fork(method_id, args=value)


def _call_from(method_id: int, call_id: int, arguments: tuple[str, object]) -> bytes:
    kind, value = arguments
    if kind == "raw":
        assert isinstance(value, bytes)
        return call(method_id, call_id, raw=value)
    assert isinstance(value, tuple)
    return call(method_id, call_id, args=value)


binding_messages = st.one_of(
    st.builds(_fork_from, method_ids, encoded),
    st.builds(_call_from, method_ids, call_ids, encoded),
    st.builds(result, call_ids, values),
    st.builds(
        lambda call_id, text: result(call_id, error=("RuntimeError", text)),
        call_ids,
        st.text(max_size=10),
    ),
)


@st.composite
def batches(draw: st.DrawFn) -> list[bytes]:
    """Mixed batches, and uniform ones as a sender's steady state produces them."""
    if draw(st.booleans()):
        return draw(st.lists(binding_messages, min_size=1, max_size=8))
    count = draw(st.integers(1, 12))
    shape = draw(st.sampled_from(["fork", "call", "result"]))
    method_id = draw(method_ids)
    arguments = draw(encoded)
    # Call ids that count up inside one varint length, as the dispatcher's do.
    first = draw(st.sampled_from([1, 64, 8192, 1 << 40]))
    if shape == "fork":
        return [_fork_from(method_id, arguments)] * count
    if shape == "call":
        return [_call_from(method_id, first + n, arguments) for n in range(count)]
    return [result(first + n, value=7) for n in range(count)]


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(batches(), st.booleans())
def test_binding_batches_always_pass(messages: list[bytes], as_view: bool) -> None:
    payload = b"".join(messages)
    count = len(messages)
    assert reference_count(payload) == count
    check_batch(memoryview(payload) if as_view else payload, count, count)
    _, head_bytes, _ = batch._check_message(messages[0], 0, len(messages[0]))
    uniform = all(
        len(message) == len(messages[0]) and message[:head_bytes] == messages[0][:head_bytes]
        for message in messages
    )
    if uniform:
        # One shape throughout: the fast path alone must accept it. A mixed batch whose
        # length happens to be a multiple of its first message's falls back to the loop,
        # which ``check_batch`` above already accepted.
        assert pattern_accepts(payload, count) in (True, None)
    assert not verdict(payload, count + 1)
    if count > 1:
        assert not verdict(payload, count - 1)


@SETTINGS
@given(batches(), st.data())
def test_a_mutated_batch_is_refused_or_still_exactly_count_messages(
    messages: list[bytes], data: st.DataObject
) -> None:
    payload = bytearray(b"".join(messages))
    count = len(messages)
    if data.draw(st.booleans(), label="truncate"):
        cut = data.draw(st.integers(0, len(payload) - 1), label="cut")
        mutated = bytes(payload[:cut])
    else:
        index = data.draw(st.integers(0, len(payload) - 1), label="index")
        # Bytes that matter most: varint continuation edges, types, kinds, statuses.
        byte = data.draw(
            st.one_of(st.sampled_from([0, 1, 2, 0x7F, 0x80, 0xFF]), st.integers(0, 255)),
            label="byte",
        )
        payload[index] = byte
        mutated = bytes(payload)
    expected = reference_count(mutated) == count
    # Only ProtocolError may escape, and the answer is the oracle's, on either type.
    assert verdict(mutated, count) is expected
    assert verdict(memoryview(mutated), count) is expected
    # The fast path never accepts what the oracle refuses (it may decline: the loop
    # then decides).
    if pattern_accepts(mutated, count):
        assert expected
