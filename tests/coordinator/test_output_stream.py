"""OutputStream: numbering, sender-side deduplication, acknowledgements, rewind, bounds.

Sans-IO: no event loop. Messages are framed like the dispatcher frames them (a zig-zag
size prefix, then the bytes), and every test reads the stream back by splitting the
segment bytes, so a wrong byte cut shows up as a wrong or unparsable message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ambrosia.protocol.outputs import OutputStream, Segment, skip_messages
from ambrosia.wire.varint import decode_zigzag_long, encode_zigzag_int


def message(seq: int) -> tuple[bytes, bytes]:
    """(head, body) of message ``seq``; sizes vary so byte cuts are checked for real."""
    body = f"m{seq}:".encode() + bytes([seq % 251]) * (seq % 7)
    return encode_zigzag_int(len(body)), body


def split(data: bytes | bytearray) -> list[bytes]:
    out: list[bytes] = []
    position = 0
    while position < len(data):
        size, start = decode_zigzag_long(data, position)
        out.append(bytes(data[start : start + size]))
        position = start + size
    assert position == len(data)
    return out


def body(seq: int) -> bytes:
    return message(seq)[1]


@dataclass
class Events:
    dirty: int = 0
    blocked: int = 0
    unblocked: int = 0
    order: list[str] = field(default_factory=list)


def make(
    buffer_bytes_max: int = 1 << 20, batch_bytes_max: int = 1 << 16
) -> tuple[OutputStream, Events]:
    events = Events()

    def on_dirty(stream: OutputStream) -> None:
        events.dirty += 1
        events.order.append("dirty")

    def on_blocked(stream: OutputStream) -> None:
        events.blocked += 1
        events.order.append("blocked")

    def on_unblocked(stream: OutputStream) -> None:
        events.unblocked += 1
        events.order.append("unblocked")

    stream = OutputStream(
        "peer",
        buffer_bytes_max=buffer_bytes_max,
        batch_bytes_max=batch_bytes_max,
        on_dirty=on_dirty,
        on_blocked=on_blocked,
        on_unblocked=on_unblocked,
    )
    return stream, events


def add(stream: OutputStream, first: int, last: int) -> None:
    for seq in range(first, last + 1):
        assert stream.next_seq == seq - 1
        stream.add(*message(seq))


def remaining(stream: OutputStream) -> list[tuple[int, bytes]]:
    """Every buffered message as (seq, body), in stream order, checked segment by segment."""
    _, _, segments = stream.snapshot()
    out: list[tuple[int, bytes]] = []
    for segment in segments:
        bodies = split(segment.data)
        assert len(bodies) == segment.count
        out.extend(zip(range(segment.first_seq, segment.last_seq + 1), bodies, strict=True))
    return out


def sent(segments: list[Segment]) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    for segment in segments:
        bodies = split(segment.data)
        assert len(bodies) == segment.count
        out.extend(zip(range(segment.first_seq, segment.last_seq + 1), bodies, strict=True))
    return out


def expected(first: int, last: int) -> list[tuple[int, bytes]]:
    return [(seq, body(seq)) for seq in range(first, last + 1)]


def buffered_size(stream: OutputStream) -> int:
    _, _, segments = stream.snapshot()
    return sum(len(segment.data) for segment in segments)


# -- numbering and batching --------------------------------------------------------------


def test_messages_are_numbered_from_one_and_batched_until_taken() -> None:
    stream, events = make()
    add(stream, 1, 5)
    assert stream.next_seq == 5
    assert events.dirty == 1, "one flush is scheduled for a burst of messages"
    assert stream.has_unsent
    taken = stream.take_unsent()
    assert [(s.first_seq, s.count) for s in taken] == [(1, 5)]
    assert sent(taken) == expected(1, 5)
    assert not stream.has_unsent
    assert stream.take_unsent() == []
    add(stream, 6, 6)
    assert events.dirty == 2, "taking the output clears the flush flag"
    assert sent(stream.take_unsent()) == expected(6, 6)


def test_hand_out_stops_at_the_first_refused_batch_and_stays_dirty() -> None:
    """A full connection or page refuses a batch: it and the rest stay unsent, in order,
    and no flush is asked for again until the refuser has room (it asks itself)."""
    stream, events = make(batch_bytes_max=30)
    add(stream, 1, 20)
    stream.seal()
    batches = len(stream.unsent)
    assert batches >= 3
    taken: list[Segment] = []

    def take_two(segment: Segment) -> bool:
        if len(taken) == 2:
            return False
        taken.append(segment)
        return True

    assert not stream.hand_out(take_two)
    assert len(stream.inflight) == 2 and len(stream.unsent) == batches - 2
    add(stream, 21, 22)
    assert events.dirty == 1, "still dirty: the refuser asks again, not the next add"
    rest: list[Segment] = []

    def take_all(segment: Segment) -> bool:
        rest.append(segment)
        return True

    assert stream.hand_out(take_all)
    assert sent(taken + rest) == expected(1, 22)
    assert not stream.has_unsent
    add(stream, 23, 23)
    assert events.dirty == 2, "everything went out: the next add asks for a flush"


def test_batches_seal_at_batch_bytes_max() -> None:
    stream, _ = make(batch_bytes_max=30)
    add(stream, 1, 20)
    assert len(stream.unsent) >= 2
    for segment in stream.unsent:
        # A batch seals as soon as it reaches the limit: at most one message beyond it.
        assert len(segment.data) - len(split(segment.data)[-1]) - 1 < 30
    taken = stream.take_unsent()
    assert sent(taken) == expected(1, 20)
    firsts = [segment.first_seq for segment in taken]
    assert firsts == sorted(firsts) and firsts[0] == 1


def test_skip_messages_finds_message_boundaries() -> None:
    data = b"".join(b"".join(message(seq)) for seq in range(1, 9))
    for count in range(9):
        cut = skip_messages(data, count)
        assert split(data[cut:]) == [body(seq) for seq in range(count + 1, 9)]


# -- sender-side deduplication ---------------------------------------------------------------


def test_messages_at_or_below_drop_through_are_numbered_but_not_buffered() -> None:
    stream, events = make()
    stream.drop_through = 3
    add(stream, 1, 3)
    assert stream.next_seq == 3
    assert not stream.has_unsent and stream.buffered_bytes == 0
    assert events.dirty == 0
    add(stream, 4, 6)
    assert sent(stream.take_unsent()) == expected(4, 6)


def test_ack_beyond_what_was_produced_drops_regenerated_output() -> None:
    # After a crash, replay regenerates output the receiver already logged; the logged trim
    # point (or the receiver's resume point) is ahead of next_seq.
    stream, _ = make()
    stream.ack(4)
    add(stream, 1, 6)
    assert remaining(stream) == expected(5, 6)
    stream.rewind(5)
    assert sent(stream.take_unsent()) == expected(6, 6)


# -- acknowledgements ---------------------------------------------------------------------


def test_ack_frees_bytes_of_sent_unsent_and_open_messages() -> None:
    stream, _ = make(batch_bytes_max=40)
    add(stream, 1, 6)
    stream.take_unsent()  # 1..6 in flight
    add(stream, 7, 12)
    stream.seal()
    add(stream, 13, 15)  # some unsent, some open
    assert stream.open_count > 0
    total = buffered_size(stream)
    assert stream.buffered_bytes == total
    stream.ack(3)
    assert remaining(stream) == expected(4, 15)
    assert stream.buffered_bytes == buffered_size(stream) < total
    stream.ack(9)
    assert remaining(stream) == expected(10, 15)
    stream.ack(14)  # inside the open batch
    assert remaining(stream) == expected(15, 15)
    assert stream.buffered_bytes == buffered_size(stream)
    stream.ack(10)  # stale acknowledgements change nothing
    assert remaining(stream) == expected(15, 15)
    stream.ack(15)
    assert remaining(stream) == [] and stream.buffered_bytes == 0
    add(stream, 16, 16)
    assert sent(stream.take_unsent()) == expected(16, 16)


def test_blocked_at_the_bound_and_unblocked_by_acks() -> None:
    stream, events = make(buffer_bytes_max=100, batch_bytes_max=1 << 16)
    seq = 0
    while not stream.blocked:
        seq += 1
        stream.add(*message(seq))
    assert events.blocked == 1
    assert stream.buffered_bytes > 100
    stream.add(*message(seq + 1))  # a handler may overshoot; no second signal
    seq += 1
    assert events.blocked == 1
    stream.take_unsent()
    stream.ack(1)
    if stream.buffered_bytes > 100:
        assert events.unblocked == 0
    stream.ack(seq - 1)
    assert stream.buffered_bytes <= 100
    assert events.unblocked == 1 and not stream.blocked
    assert events.order.count("blocked") == 1
    assert events.order.index("blocked") < events.order.index("unblocked")
    # Filling again blocks again.
    while not stream.blocked:
        seq += 1
        stream.add(*message(seq))
    assert events.blocked == 2


def test_rewind_can_unblock() -> None:
    stream, events = make(buffer_bytes_max=50)
    add(stream, 1, 10)
    assert stream.blocked
    stream.take_unsent()
    stream.rewind(10)
    assert not stream.blocked and events.unblocked == 1
    assert remaining(stream) == []


# -- rewind -----------------------------------------------------------------------------


def test_rewind_inside_a_segment_resends_the_rest_once_in_order() -> None:
    stream, _ = make(batch_bytes_max=40)
    add(stream, 1, 12)
    first = stream.take_unsent()
    assert len(first) >= 2, "the test needs several segments"
    add(stream, 13, 14)
    assert first[0].count >= 2
    middle = first[0].first_seq + first[0].count // 2 - 1  # inside the first segment
    stream.rewind(middle)
    resent = stream.take_unsent()
    assert sent(resent) == expected(middle + 1, 14)
    assert stream.take_unsent() == []
    assert stream.acked_through == middle


def test_rewind_inside_the_open_batch() -> None:
    stream, _ = make()
    add(stream, 1, 3)
    stream.take_unsent()
    add(stream, 4, 9)  # open, never taken
    assert stream.open_count == 6
    stream.rewind(6)
    assert sent(stream.take_unsent()) == expected(7, 9)
    add(stream, 10, 11)
    assert sent(stream.take_unsent()) == expected(10, 11)


def test_rewind_to_zero_resends_everything_and_never_rewinds_below_acked() -> None:
    stream, _ = make(batch_bytes_max=25)
    add(stream, 1, 8)
    stream.take_unsent()
    stream.rewind(0)
    assert sent(stream.take_unsent()) == expected(1, 8)
    stream.ack(5)
    # A receiver claiming less than it acknowledged: what was freed cannot come back.
    stream.rewind(2)
    assert stream.acked_through == 5
    assert sent(stream.take_unsent()) == expected(6, 8)


def test_a_receiver_resuming_below_what_it_acknowledged_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The receiver lost acknowledged calls (it stops itself when it sees our Hello's
    acknowledged point; this is the sender's view when it answers anyway): one ERROR line
    naming the destination, its resume point, what it had acknowledged and the lost range."""
    stream, _ = make(batch_bytes_max=25)
    add(stream, 1, 8)
    stream.take_unsent()
    caplog.set_level(logging.DEBUG, logger="ambrosia.outputs")
    stream.rewind(0)
    stream.ack(6)
    stream.rewind(6)  # at what it acknowledged: nothing lost, nothing said
    assert caplog.records == []
    stream.rewind(3)
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.name == "ambrosia.outputs"
    message = record.getMessage()
    assert message.startswith("peer resumes after call 3 but had acknowledged calls up to 6")
    assert "lost acknowledged calls 4..6" in message
    assert stream.acked_through == 6
    assert sent(stream.take_unsent()) == expected(7, 8)


def test_rewind_twice_without_sending_in_between() -> None:
    stream, _ = make(batch_bytes_max=25)
    add(stream, 1, 10)
    stream.take_unsent()
    stream.rewind(2)
    stream.rewind(4)
    stream.rewind(3)  # below the previous point: nothing was freed beyond 4
    assert sent(stream.take_unsent()) == expected(5, 10)


# -- snapshot and restore --------------------------------------------------------------------


def test_snapshot_restore_round_trip() -> None:
    stream, _ = make(batch_bytes_max=30)
    add(stream, 1, 10)
    stream.take_unsent()
    add(stream, 11, 17)
    stream.ack(4)
    next_seq, acked, segments = stream.snapshot()
    assert (next_seq, acked) == (17, 4)
    copy, _ = make(batch_bytes_max=30)
    copy.restore(next_seq, acked, [Segment(s.first_seq, s.count, bytes(s.data)) for s in segments])
    assert copy.next_seq == 17 and copy.acked_through == 4
    assert remaining(copy) == expected(5, 17)
    assert copy.buffered_bytes == stream.buffered_bytes
    # The restored stream resends from the receiver's point and keeps numbering.
    copy.rewind(7)
    add(copy, 18, 19)
    assert sent(copy.take_unsent()) == expected(8, 19)
    # A restored stream drops regenerated output it already acknowledged.
    again, _ = make()
    again.restore(0, 4, [])
    add(again, 1, 6)
    assert remaining(again) == expected(5, 6)


# -- property: whatever happens, nothing lost, nothing duplicated ------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 6)),
        st.tuples(st.just("seal"), st.just(0)),
        st.tuples(st.just("take"), st.just(0)),
        st.tuples(st.just("ack"), st.integers(0, 80)),
        st.tuples(st.just("rewind"), st.integers(0, 80)),
        st.tuples(st.just("restore"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(operations, st.integers(20, 200), st.integers(1, 120))
def test_acked_prefix_plus_buffer_is_every_message_once(
    ops: list[tuple[str, int]], buffer_bytes_max: int, batch_bytes_max: int
) -> None:
    stream, events = make(buffer_bytes_max=buffer_bytes_max, batch_bytes_max=batch_bytes_max)
    # What the receiver has, as a simulated connection would deliver it.
    received: list[int] = []
    connected_through = 0  # the receiver's resume point on the current connection
    for op, value in ops:
        if op == "add":
            add(stream, stream.next_seq + 1, stream.next_seq + value)
        elif op == "seal":
            stream.seal()
        elif op == "take":
            for seq, data in sent(stream.take_unsent()):
                assert data == body(seq)
                # The connection delivers in order, right after what it delivered last.
                assert seq == connected_through + 1
                connected_through = seq
                received.append(seq)
        elif op == "ack":
            # A receiver acknowledges only what it has.
            through = min(value, connected_through)
            stream.ack(through)
        elif op == "rewind":
            # A new connection: the receiver has a prefix of what was delivered, never
            # less than it acknowledged (durability).
            through = max(min(value, connected_through), stream.acked_through)
            del received[through:]
            connected_through = through
            stream.rewind(through)
        elif op == "restore":
            next_seq, acked, segments = stream.snapshot()
            restored, events = make(
                buffer_bytes_max=buffer_bytes_max, batch_bytes_max=batch_bytes_max
            )
            restored.restore(next_seq, acked, segments)
            stream = restored
            # A restored stream resends on its first connection.
            through = max(min(acked, connected_through), stream.acked_through)
            del received[through:]
            connected_through = through
            stream.rewind(through)
        # The invariant.
        buffered = remaining(stream)
        assert [seq for seq, _ in buffered] == list(
            range(stream.acked_through + 1, stream.next_seq + 1)
        )
        for seq, data in buffered:
            assert data == body(seq)
        assert stream.buffered_bytes == buffered_size(stream)
        # Blocked exactly while over the bound (a restored stream notices on its next add).
        if stream.blocked:
            assert stream.buffered_bytes > buffer_bytes_max
        elif op == "add" and value and stream.next_seq > stream.acked_through:
            assert stream.buffered_bytes <= buffer_bytes_max
        assert events.blocked - events.unblocked == int(stream.blocked)
        assert received == list(range(1, len(received) + 1))
    # Draining: one more connection sends everything; the receiver ends with 1..next_seq.
    for seq, data in sent(stream.take_unsent()):
        assert seq == connected_through + 1 and data == body(seq)
        connected_through = seq
        received.append(seq)
    assert received == list(range(1, stream.next_seq + 1))


def test_record_adds_names_the_first_message_of_every_add_then_stops() -> None:
    def run(record: bool) -> tuple[list[int], OutputStream, Events]:
        stream, events = make(buffer_bytes_max=20, batch_bytes_max=12)
        stream.drop_through = 2  # replay: messages 1 and 2 are consumed already
        noted: list[int] = []
        if record:
            stream.record_adds(noted.append)
        add(stream, 1, 4)  # two dropped, two kept
        stream.add_run(b"".join(head + data for head, data in map(message, (5, 6, 7))), 3)
        if record:
            assert noted == [1, 2, 3, 4, 5]
            stream.record_adds(None)
        add(stream, 8, 9)
        return noted, stream, events

    noted, recorded, recorded_events = run(record=True)
    assert noted == [1, 2, 3, 4, 5]  # nothing after it stopped
    _, plain, plain_events = run(record=False)
    # Recording changes nothing else: the same bytes, seals and bound reports.
    assert remaining(recorded) == remaining(plain)
    assert [seq for seq, _ in remaining(recorded)] == [3, 4, 5, 6, 7, 8, 9]
    assert [len(s.data) for s in recorded.unsent] == [len(s.data) for s in plain.unsent]
    assert recorded_events == plain_events
    assert plain_events.blocked == 1
