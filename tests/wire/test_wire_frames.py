"""Streaming decoders: limits before allocation, poisoning, checkpoints, log records."""

from __future__ import annotations

import struct

import pytest
import xxhash

from ambrosia.errors import FrameTooLargeError, ProtocolError, VarintTooLongError
from ambrosia.wire import (
    END_OF_STREAM,
    FRAME_BYTES_MAX_DEFAULT,
    NEED_DATA,
    RECORD_HEADER_BYTES,
    RECORD_SEQUENCE_CHECKPOINT,
    CheckpointChunk,
    CheckpointComplete,
    CheckpointHeader,
    DataBatch,
    Direction,
    IncomingRpc,
    InitialMessage,
    LogRecord,
    LogRecordDecoder,
    MessageDecoder,
    OutgoingRpc,
    RpcKind,
    TakeBecomingPrimaryCheckpoint,
    TakeCheckpoint,
    decode_log_record,
    encode,
    encode_log_record,
    encode_log_record_header,
)
from ambrosia.wire.varint import INT32_MAX, encode_zigzag_int

B2C = Direction.BINDING_TO_COORDINATOR
C2B = Direction.COORDINATOR_TO_BINDING
C2C = Direction.COORDINATOR_TO_COORDINATOR


def test_oversize_prefix_is_refused_right_after_the_prefix() -> None:
    decoder = MessageDecoder(B2C, frame_bytes_max=1024)
    prefix = encode_zigzag_int(INT32_MAX)  # claims about 2 GiB
    assert len(prefix) == 5
    for byte in prefix[:-1]:
        decoder.feed(bytes((byte,)))
        assert decoder.next_event() is NEED_DATA
    decoder.feed(prefix[-1:])
    with pytest.raises(FrameTooLargeError) as caught:
        decoder.next_event()
    assert (caught.value.size, caught.value.limit) == (INT32_MAX, 1024)
    assert decoder.buffered_bytes == len(prefix)  # no body was waited for or buffered


def test_default_limit_is_64_mib_and_inclusive() -> None:
    assert FRAME_BYTES_MAX_DEFAULT == 64 * 1024 * 1024
    decoder = MessageDecoder(B2C)
    decoder.feed(encode_zigzag_int(FRAME_BYTES_MAX_DEFAULT))
    assert decoder.next_event() is NEED_DATA  # at the limit: legal, waits for the body
    decoder = MessageDecoder(B2C)
    decoder.feed(encode_zigzag_int(FRAME_BYTES_MAX_DEFAULT + 1))
    with pytest.raises(FrameTooLargeError):
        decoder.next_event()


def test_a_message_exactly_at_the_limit_passes() -> None:
    message = InitialMessage(b"z" * 99)  # type byte + 99 = 100 bytes
    decoder = MessageDecoder(B2C, frame_bytes_max=100)
    decoder.feed(encode(message))
    assert decoder.next_event() == message
    decoder = MessageDecoder(B2C, frame_bytes_max=99)
    decoder.feed(encode(message))
    with pytest.raises(FrameTooLargeError):
        decoder.next_event()


@pytest.mark.parametrize("prefix", [b"\x00", b"\x01", encode_zigzag_int(-1000)])
def test_zero_or_negative_size_is_a_protocol_error(prefix: bytes) -> None:
    decoder = MessageDecoder(C2B)
    decoder.feed(prefix)
    with pytest.raises(ProtocolError):
        decoder.next_event()


def test_too_long_size_prefix_is_refused_at_its_fifth_byte() -> None:
    decoder = MessageDecoder(C2B)
    decoder.feed(b"\x80" * 5)
    with pytest.raises(VarintTooLongError):
        decoder.next_event()


def test_poisoned_decoder_keeps_raising_the_same_error() -> None:
    decoder = MessageDecoder(C2B)
    decoder.feed(encode(TakeCheckpoint()) + b"\x02\x63")  # then type 99
    assert decoder.next_event() == TakeCheckpoint()
    with pytest.raises(ProtocolError) as first:
        decoder.next_event()
    assert decoder.poisoned
    for call in (
        decoder.next_event,
        lambda: decoder.feed(encode(TakeCheckpoint())),
        decoder.feed_eof,
    ):
        with pytest.raises(type(first.value)) as again:
            call()
        assert again.value is first.value


def test_end_of_stream() -> None:
    decoder = MessageDecoder(C2B)
    decoder.feed(encode(TakeCheckpoint()))
    decoder.feed_eof()
    assert list(decoder) == [TakeCheckpoint()]
    assert decoder.next_event() is END_OF_STREAM
    with pytest.raises(RuntimeError):
        decoder.feed(b"\x02\x02")

    truncated = MessageDecoder(C2B)
    truncated.feed(encode(InitialMessage(b"abc"))[:-1])
    assert truncated.next_event() is NEED_DATA
    truncated.feed_eof()
    with pytest.raises(ProtocolError, match="ended inside a frame"):
        truncated.next_event()

    inside_prefix = MessageDecoder(C2B)
    inside_prefix.feed(b"\x80")
    inside_prefix.feed_eof()
    with pytest.raises(ProtocolError):
        inside_prefix.next_event()


def test_checkpoint_bytes_are_delivered_raw_and_never_parsed() -> None:
    # Raw bytes that would be an unknown message type if parsed.
    raw = b"\x02\x63" * 1000
    stream = (
        encode(OutgoingRpc("", 1, RpcKind.FORK, b"before"))
        + encode(CheckpointHeader(len(raw)))
        + raw
        + encode(TakeCheckpoint())
    )
    decoder = MessageDecoder(B2C, frame_bytes_max=16)  # the checkpoint is not a frame
    pieces = [stream[index : index + 300] for index in range(0, len(stream), 300)]
    events: list[object] = []
    for piece in pieces:
        decoder.feed(piece)
        events.extend(decoder)
    decoder.feed_eof()
    events.extend(decoder)
    chunks = [event for event in events if isinstance(event, CheckpointChunk)]
    assert len(chunks) > 1
    assert b"".join(chunk.data for chunk in chunks) == raw
    others = [event for event in events if not isinstance(event, CheckpointChunk)]
    assert others == [
        OutgoingRpc("", 1, RpcKind.FORK, b"before"),
        CheckpointHeader(len(raw)),
        CheckpointComplete(len(raw)),
        TakeCheckpoint(),
    ]


def test_empty_checkpoint_and_checkpoint_cut_short() -> None:
    decoder = MessageDecoder(C2B)
    decoder.feed(encode(CheckpointHeader(0)) + encode(TakeCheckpoint()))
    assert list(decoder) == [CheckpointHeader(0), CheckpointComplete(0), TakeCheckpoint()]

    short = MessageDecoder(C2B)
    short.feed(encode(CheckpointHeader(10)) + b"12345")
    assert list(short) == [CheckpointHeader(10), CheckpointChunk(b"12345")]
    short.feed_eof()
    with pytest.raises(ProtocolError, match="5 checkpoint bytes missing"):
        short.next_event()


def test_stream_decoder_copies_data_batch_payload_out_of_its_buffer() -> None:
    payload = encode(IncomingRpc(1, RpcKind.FORK, b"p" * 100))
    decoder = MessageDecoder(C2C)
    decoder.feed(encode(DataBatch(1, 1, 1, payload)))
    event = decoder.next_event()
    assert isinstance(event, DataBatch)
    assert isinstance(event.payload, bytes)
    # The buffer can be reused and compacted while the event is still held.
    decoder.feed(b"\x00" * 10)
    assert event.payload == payload


def test_buffer_stays_bounded_over_a_long_stream() -> None:
    message = IncomingRpc(7, RpcKind.FORK, b"q" * 50)
    frames = encode(message) * 2000
    decoder = MessageDecoder(C2B)
    delivered = 0
    largest_buffer = 0
    for round_index in range(20):
        for start in range(0, len(frames), 4093):  # a size that never aligns with frames
            decoder.feed(frames[start : start + 4093])
            delivered += sum(1 for _ in decoder)
            largest_buffer = max(largest_buffer, len(decoder._buffer))
        assert delivered == (round_index + 1) * 2000
    assert decoder.buffered_bytes == 0
    # Consumed bytes are dropped in bulk: the buffer never holds the whole stream.
    assert largest_buffer < 200_000 < 20 * len(frames)


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        MessageDecoder(C2B, frame_bytes_max=0)
    with pytest.raises(ValueError):
        LogRecordDecoder(frame_bytes_max=INT32_MAX + 1)


# -- log records ----------------------------------------------------------------------


def test_log_record_round_trip_and_header_layout() -> None:
    body = encode(IncomingRpc(3, RpcKind.ASYNC, b"hi")) + encode(TakeCheckpoint())
    record = encode_log_record(-5, 42, body)
    committer_id, size, check, sequence_id = struct.unpack_from("<iiQq", record)
    assert (committer_id, size, sequence_id) == (-5, RECORD_HEADER_BYTES + len(body), 42)
    assert check == xxhash.xxh64_intdigest(body)
    assert record[RECORD_HEADER_BYTES:] == body
    assert encode_log_record_header(-5, 42, body) == record[:RECORD_HEADER_BYTES]
    assert decode_log_record(record) == LogRecord(
        -5, 42, (IncomingRpc(3, RpcKind.ASYNC, b"hi"), TakeCheckpoint())
    )


def test_log_record_with_a_flipped_body_bit_fails_its_check() -> None:
    record = bytearray(encode_log_record(1, 0, encode(InitialMessage(b"data"))))
    record[-1] ^= 0x01
    decoder = LogRecordDecoder()
    decoder.feed(record)
    with pytest.raises(ProtocolError, match="check bytes"):
        decoder.next_event()


def test_log_record_size_checks() -> None:
    too_small = struct.pack("<iiQq", 1, 23, 0, 0)
    with pytest.raises(ProtocolError, match="below the 24-byte header"):
        decode_log_record(too_small)
    # A header claiming about 2 GiB is refused after its first 8 bytes.
    decoder = LogRecordDecoder(frame_bytes_max=4096)
    decoder.feed(struct.pack("<ii", 1, INT32_MAX))
    with pytest.raises(FrameTooLargeError):
        decoder.next_event()
    assert decoder.buffered_bytes == 8
    record = encode_log_record(1, 0, b"")
    with pytest.raises(ProtocolError):
        decode_log_record(record + b"\x00")
    with pytest.raises(ProtocolError):
        decode_log_record(record[:-1])
    with pytest.raises(ValueError):
        encode_log_record_header(1 << 31, 0, b"")


def test_checkpoint_record_is_followed_by_raw_bytes() -> None:
    state = bytes(range(256)) * 4
    stream = (
        encode_log_record(9, RECORD_SEQUENCE_CHECKPOINT, encode(CheckpointHeader(len(state))))
        + state
        + encode_log_record(9, -1, encode(TakeBecomingPrimaryCheckpoint()))
    )
    decoder = LogRecordDecoder()
    events: list[object] = []
    for start in range(0, len(stream), 100):
        decoder.feed(stream[start : start + 100])
        events.extend(decoder)
    decoder.feed_eof()
    events.extend(decoder)
    assert events[0] == LogRecord(9, RECORD_SEQUENCE_CHECKPOINT, (CheckpointHeader(len(state)),))
    chunks = [event for event in events if isinstance(event, CheckpointChunk)]
    assert b"".join(chunk.data for chunk in chunks) == state
    assert events[-2:] == [
        CheckpointComplete(len(state)),
        LogRecord(9, -1, (TakeBecomingPrimaryCheckpoint(),)),
    ]
    assert decoder.next_event() is END_OF_STREAM


def test_checkpoint_header_must_end_its_record() -> None:
    body = encode(CheckpointHeader(3)) + encode(TakeCheckpoint())
    with pytest.raises(ProtocolError, match="last message"):
        decode_log_record(encode_log_record(1, -2, body))


def test_log_records_speak_the_coordinator_to_binding_vocabulary() -> None:
    body = encode(OutgoingRpc("server", 1, RpcKind.FORK, b""))
    # Read as an incoming RPC it is malformed (its rpc kind byte would be 'e').
    with pytest.raises(ProtocolError):
        decode_log_record(encode_log_record(1, 0, body))
