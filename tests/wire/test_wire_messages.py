"""Message codec edge cases: per-direction vocabularies, refusals, encode-side checks."""

from __future__ import annotations

import pytest

from ambrosia.errors import ProtocolError, UnknownMessageTypeError
from ambrosia.wire import (
    INSTANCE_NAME_BYTES_MAX,
    AttachTo,
    CheckpointHeader,
    Commit,
    CountReplayableRpcBatch,
    DataBatch,
    Direction,
    Hello,
    IncomingRpc,
    Message,
    OutgoingRpc,
    ReplayFrom,
    RpcBatch,
    RpcKind,
    TakeCheckpoint,
    TrimTo,
    decode_message,
    decode_message_body,
    decode_messages,
    encode,
    encode_data_batch_head,
    encode_into,
)
from ambrosia.wire.varint import encode_zigzag_int, encode_zigzag_long

B2C = Direction.BINDING_TO_COORDINATOR
C2B = Direction.COORDINATOR_TO_BINDING
C2C = Direction.COORDINATOR_TO_COORDINATOR


def frame(message_type: int, *fields: bytes) -> bytes:
    body = bytes((message_type,)) + b"".join(fields)
    return encode_zigzag_int(len(body)) + body


def test_outgoing_rpc_becomes_the_incoming_rpc_the_destination_sees() -> None:
    outgoing = OutgoingRpc("server", -3, RpcKind.IMPULSE, b"args", reserved=1)
    incoming = outgoing.to_incoming()
    assert incoming == IncomingRpc(-3, RpcKind.IMPULSE, b"args", reserved=1)
    assert incoming.is_return and outgoing.is_return
    # The incoming encoding is the outgoing one without the destination field.
    name_field = encode_zigzag_int(len(b"server")) + b"server"
    assert encode(outgoing)[2 + len(name_field) :] == encode(incoming)[2:]


@pytest.mark.parametrize("message_type", [19, 99, 255])
@pytest.mark.parametrize("direction", list(Direction))
def test_unknown_types_are_refused(direction: Direction, message_type: int) -> None:
    with pytest.raises(UnknownMessageTypeError) as caught:
        decode_message(frame(message_type), direction)
    assert caught.value.message_type == message_type


def test_peer_messages_are_refused_on_binding_links() -> None:
    commit = encode(Commit(5, 3))
    for direction in (B2C, C2B):
        with pytest.raises(UnknownMessageTypeError):
            decode_message(commit, direction)
    with pytest.raises(UnknownMessageTypeError):
        decode_message(encode(IncomingRpc(1, RpcKind.FORK, b"")), C2C)


def test_data_after_a_message_without_data_is_refused() -> None:
    with pytest.raises(ProtocolError, match="trailing"):
        decode_message(frame(2, b"\x00"), C2B)


@pytest.mark.parametrize(
    ("direction", "encoded"),
    [
        # rpc kind 3 does not exist
        (C2B, frame(0, b"\x00", encode_zigzag_int(1), b"\x03")),
        # truncated: no rpc kind byte
        (C2B, frame(0, b"\x00", encode_zigzag_int(1))),
        # destination name longer than the message
        (B2C, frame(0, encode_zigzag_int(10), b"abc")),
        # negative destination length
        (B2C, frame(0, encode_zigzag_int(-1), b"\x00\x02\x01")),
        # name over the limit
        (B2C, frame(1, b"n" * (INSTANCE_NAME_BYTES_MAX + 1))),
        # invalid UTF-8 in a name
        (B2C, frame(1, b"\xff\xfe")),
        # replayable above total
        (C2C, frame(3, encode_zigzag_long(2), encode_zigzag_long(3))),
        (C2C, frame(4, encode_zigzag_long(-1), encode_zigzag_long(0))),
        (C2C, frame(14, encode_zigzag_long(-5))),
        # negative checkpoint length
        (B2C, frame(8, encode_zigzag_long(-1))),
        # batch count disagrees with the messages held
        (C2B, frame(5, encode_zigzag_int(2), encode(IncomingRpc(1, RpcKind.FORK, b"")))),
        (C2B, frame(5, encode_zigzag_int(0), encode(IncomingRpc(1, RpcKind.FORK, b"")))),
        (C2B, frame(5, encode_zigzag_int(-1))),
        # replayable count above count
        (C2B, frame(13, encode_zigzag_int(0), encode_zigzag_int(1))),
        # a batch may only hold RPCs: no nesting, hence no unbounded recursion
        (C2B, frame(5, encode_zigzag_int(1), encode(RpcBatch(())))),
        # inner message runs past the end of its batch
        (C2B, frame(5, encode_zigzag_int(1), encode_zigzag_int(9), b"\x00\x00")),
        # inner message of size 0
        (C2B, frame(5, encode_zigzag_int(1), b"\x00\x00")),
        # DataBatch numbering starts at 1, replayable <= count
        (C2C, frame(17, encode_zigzag_long(0), encode_zigzag_int(0), encode_zigzag_int(0))),
        (C2C, frame(17, encode_zigzag_long(1), encode_zigzag_int(1), encode_zigzag_int(2))),
        # Hello cut short
        (C2C, frame(16, encode_zigzag_int(1), encode_zigzag_int(1), b"a")),
    ],
)
def test_malformed_messages_are_protocol_errors(direction: Direction, encoded: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_message(encoded, direction)
    # The type is known in this direction: the refusal is about the content.
    assert not isinstance(caught.value, UnknownMessageTypeError)


def test_decode_message_wants_exactly_one_message() -> None:
    one = encode(TakeCheckpoint())
    with pytest.raises(ProtocolError):
        decode_message(one + b"\x00", C2B)
    with pytest.raises(ProtocolError):
        decode_message(one[:1], C2B)
    with pytest.raises(ProtocolError):
        decode_message(b"", C2B)
    with pytest.raises(ProtocolError):
        decode_message(b"\x00", C2B)  # size 0
    with pytest.raises(ProtocolError):
        decode_message_body(memoryview(b""), C2B)


def test_decode_messages_reads_packed_messages() -> None:
    messages: list[Message] = [
        IncomingRpc(1, RpcKind.ASYNC, b"x"),
        TakeCheckpoint(),
        CheckpointHeader(3),
    ]
    packed = b"".join(encode(message) for message in messages)
    assert decode_messages(packed, C2B) == messages
    assert decode_messages(b"", C2B) == []
    with pytest.raises(ProtocolError):
        decode_messages(packed[:-1], C2B)


def test_data_batch_payload_is_zero_copy_from_immutable_input() -> None:
    rpcs = [IncomingRpc(index, RpcKind.FORK, b"a" * index) for index in range(3)]
    payload = b"".join(encode(rpc) for rpc in rpcs)
    encoded = encode(DataBatch(10, 3, 3, payload))
    decoded = decode_message(encoded, C2C)
    assert isinstance(decoded, DataBatch)
    assert isinstance(decoded.payload, memoryview)
    assert decoded.payload.obj is encoded  # a view of the input, not a copy
    assert decoded.payload == payload
    # From a mutable buffer it must be a copy: the buffer may change later.
    source = bytearray(encoded)
    copied = decode_message(source, C2C)
    assert isinstance(copied, DataBatch)
    source[-1] ^= 0xFF
    assert copied.payload == payload
    assert decode_messages(decoded.payload, C2B) == rpcs


@pytest.mark.parametrize(
    "message",
    [
        IncomingRpc(1, 3, b""),  # type: ignore[arg-type]
        IncomingRpc(1, RpcKind.FORK, b"", reserved=256),
        IncomingRpc(1, RpcKind.FORK, b"", reserved=-1),
        IncomingRpc(1 << 31, RpcKind.FORK, b""),
        OutgoingRpc("x" * (INSTANCE_NAME_BYTES_MAX + 1), 1, RpcKind.FORK, b""),
        OutgoingRpc("\ud800", 1, RpcKind.FORK, b""),  # a lone surrogate is not UTF-8
        AttachTo("y" * (INSTANCE_NAME_BYTES_MAX + 1)),
        Commit(1, 2),
        ReplayFrom(-1, -1),
        TrimTo(-1),
        CheckpointHeader(-1),
        CheckpointHeader(1 << 63),
        CountReplayableRpcBatch(2, (IncomingRpc(1, RpcKind.FORK, b""),)),
        RpcBatch((IncomingRpc(1, RpcKind.FORK, b""), OutgoingRpc("", 1, RpcKind.FORK, b""))),
        DataBatch(0, 0, 0, b""),
        DataBatch(1, 1, 2, b""),
        Hello(1 << 31, "a", "b", 0),
        Hello(1, "a", "b", 1 << 63),
    ],
)
def test_unencodable_messages_raise_value_error_and_write_nothing(message: Message) -> None:
    out = bytearray(b"kept")
    with pytest.raises(ValueError):
        encode_into(out, message)
    assert out == b"kept"


def test_encoding_something_else_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        encode_into(bytearray(), object())  # type: ignore[arg-type]


def test_data_batch_head_plus_payload_is_the_whole_message() -> None:
    payload = encode(IncomingRpc(1, RpcKind.FORK, b"a")) + encode(
        IncomingRpc(2, RpcKind.IMPULSE, b"")
    )
    batch = DataBatch(5, 2, 1, payload)
    assert encode_data_batch_head(5, 2, 1, len(payload)) + payload == encode(batch)
