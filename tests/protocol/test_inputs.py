"""``InputMarks`` (ambrosia.protocol.inputs) on its own, without an event loop.

The oracle for every digest is the standard library's ``zlib.crc32`` of the messages
concatenated, computed here in one call: the marks chain it batch by batch (and may use
zlib-ng), so agreement shows the chaining, not a shared implementation.
"""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ambrosia.errors import LogGapError, ProtocolError
from ambrosia.log.page import InputGroup, Page
from ambrosia.protocol.inputs import InputMarks, InputSequenceError, InputVerdict, verdict


def page(
    sequence: int,
    *groups: tuple[str, int, int, bytes],
    trims: tuple[tuple[str, int], ...] | list[tuple[str, int]] = (),
) -> Page:
    return Page(
        1,
        sequence,
        tuple(
            InputGroup(source, first, count, count, data) for source, first, count, data in groups
        ),
        tuple(trims),
        offset=0,
        size_bytes=0,
    )


def test_batches_in_order_move_the_mark_and_chain_the_digest() -> None:
    marks = InputMarks()
    assert marks.resume_point("client") == (0, 0), "a new sender resumes from nothing"
    batches = [(1, 3, b"abc"), (4, 1, b"d"), (5, 2, b"\x00\xff")]
    for first_seq, count, data in batches:
        assert marks.verdict("client", first_seq, count) is InputVerdict.NEXT
        marks.accept("client", first_seq, count, data)
    assert marks.accepted_through("client") == 6
    assert marks.resume_point("client") == (6, zlib.crc32(b"abcd\x00\xff"))
    assert marks.accepted == {"client": 6}
    assert marks.delivered == {}, "accepted is not delivered"
    assert marks.accepted_through("other") == 0


@pytest.mark.parametrize(
    ("first_seq", "count", "expected", "phrase"),
    [
        (3, 2, InputVerdict.DUPLICATE, "calls 3..4 were accepted already"),
        (1, 5, InputVerdict.DUPLICATE, "calls 1..5 were accepted already"),
        (0, 1, InputVerdict.DUPLICATE, "calls 0..0 were accepted already"),
        (4, 4, InputVerdict.OVERLAP, "calls 4..5 were accepted already"),
        (9, 1, InputVerdict.GAP, "calls 6..8 never came"),
        (6, 0, InputVerdict.EMPTY, "it carries 0 calls"),
    ],
)
def test_anything_but_the_next_batch_is_refused_naming_sender_and_numbers(
    first_seq: int, count: int, expected: InputVerdict, phrase: str
) -> None:
    marks = InputMarks()
    marks.accept("client", 1, 5, b"12345")
    before = marks.resume_point("client")
    assert marks.verdict("client", first_seq, count) is expected
    with pytest.raises(InputSequenceError) as caught:
        marks.accept("client", first_seq, count, b"x" * max(count, 0))
    error = caught.value
    assert isinstance(error, ProtocolError), "a peer's bad batch is a protocol error"
    assert (error.sender, error.first_seq, error.count, error.accepted) == (
        "client",
        first_seq,
        count,
        5,
    )
    assert error.verdict is expected
    assert f"batch from client starts at {first_seq}, expected 6" in str(error)
    assert phrase in str(error)
    assert marks.resume_point("client") == before, "a refused batch changes nothing"
    marks.accept("client", 6, 1, b"6")  # and the next one is still taken
    assert marks.resume_point("client") == (6, zlib.crc32(b"123456"))


def test_a_refused_first_batch_leaves_no_trace_of_its_sender() -> None:
    marks = InputMarks()
    with pytest.raises(InputSequenceError, match="starts at 5, expected 1"):
        marks.expect("intruder", 5, 1)
    with pytest.raises(InputSequenceError, match="gap"):
        marks.accept("intruder", 5, 1, b"x")
    assert "intruder" not in marks.accepted and not marks.senders


def test_the_verdict_function_on_its_own() -> None:
    assert verdict(0, 1, 1) is InputVerdict.NEXT
    assert verdict(0, 2, 1) is InputVerdict.GAP
    assert verdict(10, 10, 1) is InputVerdict.DUPLICATE
    assert verdict(10, 10, 2) is InputVerdict.OVERLAP
    assert verdict(10, 11, -1) is InputVerdict.EMPTY


def test_delivery_moves_the_delivered_mark_and_takes_the_digest_from_acceptance() -> None:
    marks = InputMarks()
    marks.accept("a", 1, 2, b"a1a2")
    marks.accept("a", 3, 1, b"a3")
    marks.accept("b", 1, 1, b"b1")
    marks.accept("a", 4, 1, b"a4")
    # A page holds one group merged from two batches of a, and b's batch.
    marks.deliver(page(0, ("a", 1, 3, b"a1a2a3"), ("b", 1, 1, b"b1")))
    assert marks.delivered == {"a": 3, "b": 1}
    assert marks.delivered_digests() == {"a": zlib.crc32(b"a1a2a3"), "b": zlib.crc32(b"b1")}
    assert [len(m.pending) for m in marks.senders.values()] == [1, 0], "a4 awaits delivery"
    marks.deliver(page(1, ("a", 4, 1, b"a4")))
    assert marks.delivered_digests()["a"] == zlib.crc32(b"a1a2a3a4")
    assert marks.resume_point("a") == (4, zlib.crc32(b"a1a2a3a4"))
    assert not marks.senders["a"].pending


def test_a_group_with_no_acceptance_mark_is_read_again() -> None:
    marks = InputMarks()
    marks.deliver(page(0, ("self", 1, 2, b"s1s2")))
    marks.deliver(page(1, ("self", 3, 1, b"s3")))
    assert marks.delivered_digests() == {"self": zlib.crc32(b"s1s2s3")}


def test_restore_from_checkpoint_marks_continues_the_chain() -> None:
    running = InputMarks()
    running.accept("client", 1, 2, b"hello")
    running.accept("peer", 1, 1, b"p")
    running.deliver(page(0, ("client", 1, 2, b"hello"), ("peer", 1, 1, b"p")))
    running.accept("client", 3, 1, b"-not-delivered")
    # What a checkpoint records: delivered, not accepted.
    inputs, digests = running.delivered, running.delivered_digests()
    assert inputs == {"client": 2, "peer": 1}
    restored = InputMarks.from_checkpoint(inputs, digests)
    assert restored.accepted == restored.delivered == inputs
    assert restored.resume_point("client") == (2, zlib.crc32(b"hello"))
    with pytest.raises(InputSequenceError, match="starts at 4, expected 3"):
        restored.expect("client", 4, 1)
    restored.accept("client", 3, 2, b" world")
    restored.deliver(page(7, ("client", 3, 2, b" world")))
    assert restored.resume_point("client") == (4, zlib.crc32(b"hello world"))
    assert restored.delivered_digests()["client"] == zlib.crc32(b"hello world")


def test_a_checkpoint_without_a_digest_leaves_that_sender_unchecked() -> None:
    marks = InputMarks.from_checkpoint({"old": 10, "new": 3}, {"new": zlib.crc32(b"abc")})
    assert marks.resume_point("old") == (10, None)
    marks.accept("old", 11, 1, b"x")
    marks.deliver(page(0, ("old", 11, 1, b"x")))
    assert marks.resume_point("old") == (11, None)
    assert marks.delivered == {"old": 11, "new": 3}
    assert marks.delivered_digests() == {"new": zlib.crc32(b"abc")}, "no digest invented"
    assert not marks.senders["old"].pending


def test_fold_accepts_what_pages_hold_and_keeps_the_highest_trim() -> None:
    marks = InputMarks.from_checkpoint({"client": 2}, {"client": zlib.crc32(b"c1c2")})
    marks.fold(
        [
            (4, page(10, ("client", 3, 1, b"c3"), ("other", 1, 1, b"o1"), trims=[("x", 5)])),
            (4, page(11, ("client", 4, 2, b"c4c5"), trims=[("x", 3), ("y", 1)])),
        ]
    )
    assert marks.accepted == {"client": 5, "other": 1}
    assert marks.delivered == {"client": 2}
    assert marks.trims == {"x": 5, "y": 1}
    assert marks.resume_point("client") == (5, zlib.crc32(b"c1c2c3c4c5"))
    assert marks.resume_point("other") == (1, zlib.crc32(b"o1"))


def test_fold_refuses_a_log_whose_inputs_skip_or_repeat() -> None:
    marks = InputMarks.from_checkpoint({"client": 2}, {})
    with pytest.raises(LogGapError, match=r"page 10: batch from client starts at 4, expected 3"):
        marks.fold([(0, page(10, ("client", 4, 1, b"x")))])
    with pytest.raises(LogGapError, match=r"page 11: .*duplicate"):
        marks.fold([(0, page(11, ("client", 2, 1, b"x")))])


@settings(max_examples=80, deadline=None)
@given(
    messages=st.lists(st.binary(min_size=1, max_size=8), min_size=1, max_size=40),
    data=st.data(),
)
def test_digests_equal_the_crc_of_the_concatenation_however_split(
    messages: list[bytes], data: st.DataObject
) -> None:
    """Batches of any size, pages of any number of batches, delivered in order."""
    marks = InputMarks()
    seq = 1
    batches: list[tuple[int, int, bytes]] = []
    while seq <= len(messages):
        count = data.draw(st.integers(1, len(messages) - seq + 1))
        chunk = b"".join(messages[seq - 1 : seq - 1 + count])
        marks.accept("s", seq, count, chunk)
        batches.append((seq, count, chunk))
        assert marks.resume_point("s") == (
            seq + count - 1,
            zlib.crc32(b"".join(messages[: seq + count - 1])),
        )
        seq += count
    sequence = 0
    while batches:
        taken = data.draw(st.integers(1, len(batches)))
        merged = data.draw(st.booleans())
        group_batches, batches = batches[:taken], batches[taken:]
        if merged:
            first = group_batches[0][0]
            count = sum(batch[1] for batch in group_batches)
            groups = [("s", first, count, b"".join(batch[2] for batch in group_batches))]
        else:
            groups = [("s", *batch) for batch in group_batches]
        marks.deliver(page(sequence, *groups))
        sequence += 1
        through = groups[-1][1] + groups[-1][2] - 1
        assert marks.delivered == {"s": through}
        assert marks.delivered_digests() == {"s": zlib.crc32(b"".join(messages[:through]))}
    assert not marks.senders["s"].pending
