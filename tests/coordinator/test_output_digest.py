"""The digests that check replay against the peers: sender stream, checkpoint, wire.

An output stream keeps the CRC-32 of the framed messages that left its buffer, chained
one freed segment (or, in replay, one dropped message) at a time; it must equal the CRC-32
of the same messages taken whole, however they were batched, acknowledged, cut or
restored. The receiver's digest arrives with its resume point and is compared exactly
when the stream's digest reaches that point. Sans-IO: no event loop.
"""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ambrosia.errors import ProtocolError
from ambrosia.protocol.checkpoint import (
    CheckpointState,
    OutputState,
    decode_checkpoint,
    encode_checkpoint,
)
from ambrosia.protocol.outputs import OutputStream, Segment
from ambrosia.wire import Direction, ReplayFrom, decode_message, encode
from ambrosia.wire.varint import encode_zigzag_int

Check = tuple[int, int, int, bool]


def message(seq: int) -> tuple[bytes, bytes]:
    body = f"m{seq}:".encode() + bytes([seq % 251]) * (seq % 7)
    return encode_zigzag_int(len(body)), body


def framed(first: int, last: int) -> bytes:
    return b"".join(b"".join(message(seq)) for seq in range(first, last + 1))


def whole(last: int) -> int:
    """The CRC-32 of messages 1..last taken whole."""
    return zlib.crc32(framed(1, last))


def make(batch_bytes_max: int = 1 << 16) -> tuple[OutputStream, list[Check]]:
    checks: list[Check] = []
    stream = OutputStream(
        "peer",
        buffer_bytes_max=1 << 20,
        batch_bytes_max=batch_bytes_max,
        on_dirty=lambda stream: None,
        on_blocked=lambda stream: None,
        on_unblocked=lambda stream: None,
    )

    def on_checked(_: OutputStream, seq: int, theirs: int, ours: int, during: bool) -> None:
        checks.append((seq, theirs, ours, during))

    stream.on_checked = on_checked
    return stream, checks


def add(stream: OutputStream, first: int, last: int) -> None:
    for seq in range(first, last + 1):
        stream.add(*message(seq))


def test_crc32_chains() -> None:
    a, b = framed(1, 5), framed(6, 9)
    assert zlib.crc32(b, zlib.crc32(a)) == zlib.crc32(a + b)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["add", "seal", "ack", "rewind"]), st.integers(1, 12)),
        max_size=40,
    ),
    st.integers(8, 64),
)
def test_chained_per_segment_equals_whole(ops: list[tuple[str, int]], batch: int) -> None:
    """Whatever the batching, acknowledgements, partial cuts and rewinds."""
    stream, checks = make(batch_bytes_max=batch)
    for op, n in ops:
        if op == "add":
            add(stream, stream.next_seq + 1, stream.next_seq + n)
        elif op == "seal":
            stream.seal()
            stream.take_unsent()
        elif op == "ack":
            stream.ack(min(stream.acked_through + n, stream.next_seq))
        else:
            resume = min(stream.acked_through + n, stream.next_seq)
            stream.rewind(resume, whole(resume))
            assert checks[-1] == (resume, whole(resume), whole(resume), False)
        assert stream.digest == whole(stream.digest_through)
        # The buffer holds exactly the messages after digest_through.
        _, _, segments = stream.snapshot()
        kept = b"".join(bytes(segment.data) for segment in segments)
        assert kept == framed(stream.digest_through + 1, stream.next_seq)


def test_a_different_message_is_found_at_the_resume_point() -> None:
    stream, checks = make()
    add(stream, 1, 10)
    stream.take_unsent()
    theirs = zlib.crc32(framed(1, 6).replace(b"m4:", b"m4!"))
    stream.rewind(6, theirs)
    assert checks == [(6, theirs, whole(6), False)]
    assert theirs != whole(6)


def test_a_resume_point_ahead_of_replay_is_checked_as_replay_reaches_it() -> None:
    """Replay after a crash: the receiver already holds 1..7, replay has made 1..3."""
    stream, checks = make()
    add(stream, 1, 3)
    stream.rewind(7, whole(7))
    assert checks == []  # not yet produced
    add(stream, 4, 6)
    assert checks == []
    stream.add(*message(7))
    assert checks == [(7, whole(7), whole(7), True)]
    add(stream, 8, 9)  # past the resume point: kept to be sent, checked no more
    assert len(checks) == 1
    assert stream.digest_through == 7 and stream.open_count == 2


def test_without_a_digest_nothing_is_compared() -> None:
    stream, checks = make()
    add(stream, 1, 4)
    stream.rewind(2)
    stream.rewind(3, None)
    assert checks == []


def test_a_receiver_that_lost_acknowledged_calls_is_not_compared() -> None:
    stream, checks = make()
    add(stream, 1, 6)
    stream.take_unsent()
    stream.ack(5)
    stream.rewind(3, whole(3))  # below what it acknowledged: another failure, logged
    assert checks == []


def test_restore_continues_the_digest() -> None:
    """A checkpoint taken mid-stream, restored, then fed the rest: as if never stopped."""
    stream, _ = make(batch_bytes_max=20)
    add(stream, 1, 12)
    stream.take_unsent()
    stream.ack(5)
    next_seq, acked, segments = stream.snapshot()
    state = CheckpointState(
        instance="server",
        number=2,
        epoch=1,
        resume_sequence=10,
        resume_chunk=2,
        inputs={"peer": 4},
        input_digests={"peer": 1234},
        outputs={
            "peer": OutputState(next_seq, acked, segments, stream.digest, stream.digest_through)
        },
    )
    decoded = decode_checkpoint(encode_checkpoint(state), "checkpoint 2")
    assert decoded.input_digests == {"peer": 1234}
    output = decoded.outputs["peer"]
    assert (output.digest, output.digest_through) == (whole(5), 5)
    restored, checks = make()
    restored.restore(output.next_seq, output.acked_through, output.segments, output.digest)
    assert restored.digest_through == 5
    add(restored, 13, 20)
    restored.take_unsent()
    restored.rewind(16, whole(16))
    assert checks == [(16, whole(16), whole(16), False)]


def test_a_checkpoint_without_digests_reads_as_unknown() -> None:
    """Checkpoints written before digests existed: readable, nothing compared."""
    state = CheckpointState(
        instance="server",
        number=1,
        epoch=1,
        resume_sequence=1,
        resume_chunk=1,
        inputs={"peer": 3},
        outputs={"peer": OutputState(4, 2, [Segment(3, 2, framed(3, 4))])},
    )
    decoded = decode_checkpoint(encode_checkpoint(state), "checkpoint 1")
    assert decoded.input_digests == {}
    assert decoded.outputs["peer"].digest is None
    stream, checks = make()
    output = decoded.outputs["peer"]
    stream.restore(output.next_seq, output.acked_through, output.segments, output.digest)
    stream.rewind(4, 99)
    assert checks == []
    assert stream.digest is None


def test_replay_from_carries_the_digest() -> None:
    for message_ in (ReplayFrom(7, 7), ReplayFrom(7, 7, 0), ReplayFrom(9, 9, 0xFFFFFFFF)):
        decoded = decode_message(encode(message_), Direction.COORDINATOR_TO_COORDINATOR)
        assert decoded == message_
    with pytest.raises(ValueError):
        encode(ReplayFrom(1, 1, 1 << 32))
    bad = bytearray(encode(ReplayFrom(1, 1, 5)))
    bad[-1] = 0x01  # zig-zag -1
    with pytest.raises(ProtocolError):
        decode_message(bytes(bad), Direction.COORDINATOR_TO_COORDINATOR)
