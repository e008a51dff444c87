"""Property tests of the message codec and the streaming decoders.

- every message type of every direction survives encode -> decode unchanged;
- a valid stream gives the same events whatever way it is split (checkpoint bytes
  compared as one concatenation, since chunking follows the split);
- arbitrary and mutated bytes either decode or raise ProtocolError (never anything else),
  and do so identically whether fed whole, byte by byte or in random pieces.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ambrosia.errors import ProtocolError, UnknownMessageTypeError
from ambrosia.wire import (
    AttachTo,
    BecomingPrimary,
    CheckpointChunk,
    CheckpointComplete,
    CheckpointHeader,
    Commit,
    CountReplayableRpcBatch,
    DataBatch,
    Direction,
    Hello,
    IncomingRpc,
    InitialMessage,
    InputHeld,
    LogRecordDecoder,
    Message,
    MessageDecoder,
    MessageType,
    OutgoingRpc,
    Ping,
    PingReturn,
    ReplayFrom,
    RpcBatch,
    RpcKind,
    TakeBecomingPrimaryCheckpoint,
    TakeCheckpoint,
    TrimTo,
    UpgradeService,
    UpgradeTakeCheckpoint,
    decode_message,
    decode_messages,
    encode,
    encode_into,
    encode_log_record,
)
from ambrosia.wire.varint import INT32_MAX, INT32_MIN, INT64_MAX, INT64_MIN

# -- strategies -----------------------------------------------------------------------

int32s = st.integers(INT32_MIN, INT32_MAX)
int64s = st.integers(INT64_MIN, INT64_MAX)
names = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
blobs = st.binary(max_size=40)
kinds = st.sampled_from(RpcKind)
reserved_bytes = st.integers(0, 255)

incoming_rpcs = st.builds(IncomingRpc, int32s, kinds, blobs, reserved_bytes)
outgoing_rpcs = st.builds(OutgoingRpc, names, int32s, kinds, blobs, reserved_bytes)


@st.composite
def count_pairs(draw: st.DrawFn, high: int = INT64_MAX) -> tuple[int, int]:
    """(total, replayable) with 0 <= replayable <= total."""
    total = draw(st.integers(0, high))
    return total, draw(st.integers(0, total))


@st.composite
def count_replayable_batches(
    draw: st.DrawFn, rpcs: st.SearchStrategy[IncomingRpc] | st.SearchStrategy[OutgoingRpc]
) -> CountReplayableRpcBatch:
    batch = tuple(draw(st.lists(rpcs, max_size=4)))
    return CountReplayableRpcBatch(draw(st.integers(0, len(batch))), batch)


@st.composite
def data_batches(draw: st.DrawFn) -> DataBatch:
    rpcs = draw(st.lists(incoming_rpcs, max_size=4))
    payload = bytearray()
    for rpc in rpcs:
        encode_into(payload, rpc)
    replayable = sum(rpc.rpc_kind != RpcKind.IMPULSE for rpc in rpcs)
    return DataBatch(draw(st.integers(1, INT64_MAX)), len(rpcs), replayable, bytes(payload))


def checkpoint_headers(length_max: int) -> st.SearchStrategy[CheckpointHeader]:
    return st.builds(CheckpointHeader, st.integers(0, length_max))


def message_strategies(
    direction: Direction, checkpoint_length_max: int
) -> dict[MessageType, st.SearchStrategy[Message]]:
    """One strategy per message type the direction speaks (the vocabulary table)."""
    common_binding: dict[MessageType, st.SearchStrategy[Message]] = {
        MessageType.TAKE_CHECKPOINT: st.just(TakeCheckpoint()),
        MessageType.PING: st.builds(Ping, blobs),
        MessageType.PING_RETURN: st.builds(PingReturn, blobs),
        MessageType.CHECKPOINT: checkpoint_headers(checkpoint_length_max),
        MessageType.INITIAL_MESSAGE: st.builds(InitialMessage, blobs),
    }
    if direction is Direction.BINDING_TO_COORDINATOR:
        return {
            MessageType.RPC: outgoing_rpcs,
            MessageType.ATTACH_TO: st.builds(AttachTo, names),
            MessageType.RPC_BATCH: st.builds(
                RpcBatch, st.lists(outgoing_rpcs, max_size=4).map(tuple)
            ),
            MessageType.COUNT_REPLAYABLE_RPC_BATCH: count_replayable_batches(outgoing_rpcs),
            **common_binding,
        }
    if direction is Direction.COORDINATOR_TO_BINDING:
        return {
            MessageType.RPC: incoming_rpcs,
            MessageType.RPC_BATCH: st.builds(
                RpcBatch, st.lists(incoming_rpcs, max_size=4).map(tuple)
            ),
            MessageType.COUNT_REPLAYABLE_RPC_BATCH: count_replayable_batches(incoming_rpcs),
            **common_binding,
            MessageType.UPGRADE_TAKE_CHECKPOINT: st.just(UpgradeTakeCheckpoint()),
            MessageType.TAKE_BECOMING_PRIMARY_CHECKPOINT: st.just(TakeBecomingPrimaryCheckpoint()),
            MessageType.UPGRADE_SERVICE: st.just(UpgradeService()),
            MessageType.BECOMING_PRIMARY: st.just(BecomingPrimary()),
        }
    return {
        MessageType.COMMIT: count_pairs().map(lambda pair: Commit(*pair)),
        MessageType.REPLAY_FROM: st.builds(
            lambda pair, digest: ReplayFrom(*pair, digest),
            count_pairs(),
            st.none() | st.integers(0, 0xFFFFFFFF),
        ),
        MessageType.TRIM_TO: st.builds(TrimTo, st.integers(0, INT64_MAX)),
        MessageType.HELLO: st.builds(Hello, int32s, names, names, int64s),
        MessageType.DATA_BATCH: data_batches(),
        MessageType.PING: st.builds(Ping, blobs),
        MessageType.PING_RETURN: st.builds(PingReturn, blobs),
        MessageType.INPUT_HELD: st.builds(InputHeld, st.booleans()),
    }


def messages_for(direction: Direction, checkpoint_length_max: int) -> st.SearchStrategy[Message]:
    return st.one_of(*message_strategies(direction, checkpoint_length_max).values())


directions = st.sampled_from(Direction)

# -- helpers --------------------------------------------------------------------------

Outcome = tuple[list[object], type[BaseException] | None]


def normalize(events: Sequence[object]) -> list[object]:
    """Merge consecutive checkpoint chunks: how raw bytes are chunked follows the split."""
    merged: list[object] = []
    for event in events:
        if (
            isinstance(event, CheckpointChunk)
            and merged
            and isinstance(merged[-1], CheckpointChunk)
        ):
            merged[-1] = CheckpointChunk(merged[-1].data + event.data)
        else:
            merged.append(event)
    return merged


def run(decoder: MessageDecoder | LogRecordDecoder, pieces: Sequence[bytes]) -> Outcome:
    """Feed ``pieces`` then EOF, draining events after each; stop at the first error."""
    events: list[object] = []
    try:
        for piece in pieces:
            decoder.feed(piece)
            events.extend(decoder)
        decoder.feed_eof()
        events.extend(decoder)
    except ProtocolError as error:
        # Poisoned: every later call raises the same class again.
        with pytest.raises(type(error)):
            decoder.next_event()
        with pytest.raises(type(error)):
            decoder.feed(b"\x02\x02")
        return normalize(events), type(error)
    return normalize(events), None


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(cut % (len(stream) + 1) for cut in cuts), len(stream)]
    return [stream[start:end] for start, end in itertools.pairwise(points)]


def stream_of(messages: Sequence[Message], checkpoint_bytes: Callable[[int], bytes]) -> bytes:
    out = bytearray()
    for message in messages:
        encode_into(out, message)
        if isinstance(message, CheckpointHeader):
            out += checkpoint_bytes(message.length)
    return bytes(out)


def raw_checkpoint(length: int) -> bytes:
    # Bytes that would be garbage as messages: they must never be parsed.
    return bytes((0xFF - index) % 256 for index in range(length))


# -- round trips ----------------------------------------------------------------------


VOCABULARY = [
    (direction, message_type)
    for direction in Direction
    for message_type in message_strategies(direction, 0)
]


def test_every_message_type_is_spoken_by_some_direction() -> None:
    assert {message_type for _, message_type in VOCABULARY} == set(MessageType)


@pytest.mark.parametrize(("direction", "message_type"), VOCABULARY)
@settings(max_examples=30)
@given(data=st.data())
def test_every_message_round_trips(
    direction: Direction, message_type: MessageType, data: st.DataObject
) -> None:
    strategy = message_strategies(direction, checkpoint_length_max=INT64_MAX)[message_type]
    message = data.draw(strategy)
    assert message.message_type == message_type
    encoded = encode(message)
    decoded = decode_message(encoded, direction)
    assert decoded == message
    assert encode(decoded) == encoded
    # encode_into appends exactly the same bytes after whatever is already there.
    out = bytearray(b"prefix")
    encode_into(out, message)
    assert out == b"prefix" + encoded
    # Every other direction either refuses the type or reads the same bytes differently.
    for other in Direction:
        if message_type not in message_strategies(other, 0):
            with pytest.raises(UnknownMessageTypeError):
                decode_message(encoded, other)


@settings(max_examples=100)
@given(data_batches())
def test_data_batch_payload_holds_the_packed_rpcs(batch: DataBatch) -> None:
    decoded = decode_message(encode(batch), Direction.COORDINATOR_TO_COORDINATOR)
    assert isinstance(decoded, DataBatch)
    rpcs = decode_messages(decoded.payload, Direction.COORDINATOR_TO_BINDING)
    assert len(rpcs) == decoded.count
    assert all(isinstance(rpc, IncomingRpc) for rpc in rpcs)


# -- streams --------------------------------------------------------------------------


@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), directions)
def test_any_split_gives_the_same_events(data: st.DataObject, direction: Direction) -> None:
    messages = data.draw(st.lists(messages_for(direction, checkpoint_length_max=30), max_size=8))
    stream = stream_of(messages, raw_checkpoint)
    expected_events, error = run(MessageDecoder(direction), [stream])
    assert error is None
    # The events are the messages, each checkpoint header followed by its raw bytes.
    assert [event for event in expected_events if not isinstance(event, CheckpointChunk)] == [
        event
        for message in messages
        for event in (
            [message, CheckpointComplete(message.length)]
            if isinstance(message, CheckpointHeader)
            else [message]
        )
    ]
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    assert run(MessageDecoder(direction), split(stream, cuts)) == (expected_events, None)
    one_byte_pieces = [stream[index : index + 1] for index in range(len(stream))]
    assert run(MessageDecoder(direction), one_byte_pieces) == (expected_events, None)


@settings(max_examples=60)
@given(st.data())
def test_log_record_stream_any_split(data: st.DataObject) -> None:
    direction = Direction.COORDINATOR_TO_BINDING
    stream = bytearray()
    expected: list[object] = []
    for sequence_id in range(data.draw(st.integers(0, 4))):
        messages = data.draw(st.lists(messages_for(direction, 20), max_size=4))
        # Inside a record, a checkpoint header may only come last.
        messages = [m for m in messages if not isinstance(m, CheckpointHeader)]
        checkpoint = data.draw(st.none() | checkpoint_headers(20))
        if checkpoint is not None:
            messages.append(checkpoint)
        body = b"".join(encode(message) for message in messages)
        stream += encode_log_record(7, sequence_id, body)
        expected.append(tuple(messages))
        if checkpoint is not None:
            stream += raw_checkpoint(checkpoint.length)
    whole_events, error = run(LogRecordDecoder(), [bytes(stream)])
    assert error is None
    records = [event for event in whole_events if hasattr(event, "messages")]
    assert [record.messages for record in records] == expected  # type: ignore[attr-defined]
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    assert run(LogRecordDecoder(), split(bytes(stream), cuts)) == (whole_events, None)


# -- hostile input --------------------------------------------------------------------


def assert_split_invariant(
    make: Callable[[], MessageDecoder | LogRecordDecoder], stream: bytes, cuts: list[int]
) -> None:
    whole = run(make(), [stream])
    assert run(make(), [stream[index : index + 1] for index in range(len(stream))]) == whole
    assert run(make(), split(stream, cuts)) == whole


@settings(max_examples=200)
@given(directions, st.binary(max_size=120), st.lists(st.integers(0, 200), max_size=8))
def test_random_bytes_decode_or_raise_protocol_error(
    direction: Direction, stream: bytes, cuts: list[int]
) -> None:
    assert_split_invariant(lambda: MessageDecoder(direction, frame_bytes_max=4096), stream, cuts)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), directions)
def test_mutated_streams_decode_or_raise_protocol_error(
    data: st.DataObject, direction: Direction
) -> None:
    messages = data.draw(st.lists(messages_for(direction, 20), min_size=1, max_size=5))
    stream = bytearray(stream_of(messages, raw_checkpoint))
    for _ in range(data.draw(st.integers(1, 3))):
        stream[data.draw(st.integers(0, len(stream) - 1))] = data.draw(st.integers(0, 255))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    assert_split_invariant(lambda: MessageDecoder(direction), bytes(stream), cuts)


@settings(max_examples=120)
@given(
    st.binary(max_size=100),
    st.integers(INT32_MIN, INT32_MAX),
    int64s,
    st.lists(st.integers(0, 200), max_size=8),
)
def test_random_record_bodies_decode_or_raise_protocol_error(
    body: bytes, committer_id: int, sequence_id: int, cuts: list[int]
) -> None:
    # Valid check bytes around garbage: exercises message parsing inside records.
    stream = encode_log_record(committer_id, sequence_id, body)
    assert_split_invariant(LogRecordDecoder, stream, cuts)


@settings(max_examples=120)
@given(st.binary(max_size=120), st.lists(st.integers(0, 200), max_size=8))
def test_random_bytes_as_log_records(stream: bytes, cuts: list[int]) -> None:
    assert_split_invariant(lambda: LogRecordDecoder(frame_bytes_max=4096), stream, cuts)
