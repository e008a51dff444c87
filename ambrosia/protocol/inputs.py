"""Input marks: how far each sender's input has been accepted and delivered, and the check
every batch of it passes.

Every sender numbers its messages to this immortal 1, 2, 3, ... (``protocol/outputs``);
numbers never travel per message, only the first of a batch does. Per sender the receiver
keeps:

- ``accepted``: the last message copied into a page of the log (durable, or in the page
  being written: both will be durable unless this process dies, and then it recovers to
  exactly what was). A resume point (ReplayFrom) names it, and the next batch must start
  right after it;
- ``delivered``: the last message the binding has been given (from durable pages only,
  in page order): what a checkpoint's state has seen, so what it records;
- the CRC-32 of the framed messages 1..accepted and 1..delivered, back to back. CRC-32
  chains (``crc32(b, crc32(a)) == crc32(a + b)``), so each is moved once per batch, never
  per message. A resume point carries the first, and the sender checks its replay against
  it (``OutputStream.rewind``); a checkpoint stores the second. A batch's digest is
  computed once, when it is accepted, and kept (``(last seq, digest)``) until the page
  holding it is delivered. A sender whose marks came from a checkpoint written before
  digests existed has digests None: nothing is computed or compared for it.

The sequence check (``verdict``, ``expect``): a batch from a sender must start at
``accepted + 1`` and carry at least one message. Anything else is refused with an
``InputSequenceError`` naming the sender, the numbers and what is wrong (a duplicate, an
overlap, a gap): the receiver never deduplicates, the sender drops what the resume point
says the receiver holds.

``trims``: the highest trim point logged per destination (how far its output was
consumed); not an input mark, but read from the same pages by the same fold, and what a
start acknowledges its output streams up to (``protocol/recovery_plan``).

Sans-IO: numbers and bytes in, marks and verdicts out. The incoming links (the check),
the committer (acceptance), the runtime (delivery, checkpoints) and recovery and hot
standbys (``fold``) share one ``InputMarks``.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Mapping

from ambrosia.errors import LogGapError, ProtocolError
from ambrosia.log.page import Page
from ambrosia.protocol.crc import crc32

__all__ = ["InputMarks", "InputSequenceError", "InputVerdict", "SenderMarks", "verdict"]


class InputVerdict(enum.Enum):
    """Where a batch ``first_seq .. first_seq + count - 1`` stands against ``accepted``."""

    NEXT = "next"  # starts right after accepted: take it
    DUPLICATE = "duplicate"  # every message is accepted already
    OVERLAP = "overlap"  # starts at or before accepted, ends after it
    GAP = "gap"  # starts after accepted + 1: messages in between never came
    EMPTY = "empty"  # carries no message


def verdict(accepted: int, first_seq: int, count: int) -> InputVerdict:
    """The verdict on a batch of ``count`` messages from ``first_seq`` after ``accepted``."""
    if count < 1:
        return InputVerdict.EMPTY
    if first_seq == accepted + 1:
        return InputVerdict.NEXT
    if first_seq > accepted:
        return InputVerdict.GAP
    if first_seq + count - 1 <= accepted:
        return InputVerdict.DUPLICATE
    return InputVerdict.OVERLAP


class InputSequenceError(ProtocolError):
    """A batch from ``sender`` that does not start right after what was accepted."""

    def __init__(self, sender: str, first_seq: int, count: int, accepted: int) -> None:
        self.sender = sender
        self.first_seq = first_seq
        self.count = count
        self.accepted = accepted
        self.verdict = verdict(accepted, first_seq, count)
        expected = accepted + 1
        last = first_seq + count - 1
        why = {
            InputVerdict.DUPLICATE: f"calls {first_seq}..{last} were accepted already",
            InputVerdict.OVERLAP: f"calls {first_seq}..{accepted} were accepted already",
            InputVerdict.GAP: f"calls {expected}..{first_seq - 1} never came",
            InputVerdict.EMPTY: f"it carries {count} calls",
            InputVerdict.NEXT: "it is the next one",  # never raised with this verdict
        }[self.verdict]
        super().__init__(
            f"batch from {sender} starts at {first_seq}, expected {expected} "
            f"({self.verdict.value}: {why})"
        )


class SenderMarks:
    """One sender's marks (module doc). ``pending``: (last seq, digest through it) of each
    batch accepted and not yet delivered."""

    __slots__ = ("accepted", "accepted_digest", "delivered", "delivered_digest", "pending")

    def __init__(self, delivered: int = 0, digest: int | None = 0) -> None:
        self.accepted = delivered
        self.accepted_digest = digest
        self.delivered = delivered
        self.delivered_digest = digest
        self.pending: deque[tuple[int, int]] = deque()


class InputMarks:
    """Every sender's marks and the trims logged per destination (module doc).

    A sender has marks once a batch from it was accepted (or a checkpoint recorded it):
    a batch that fails the check leaves no trace.
    """

    __slots__ = ("senders", "trims")

    def __init__(self) -> None:
        self.senders: dict[str, SenderMarks] = {}
        self.trims: dict[str, int] = {}

    @classmethod
    def from_checkpoint(cls, inputs: Mapping[str, int], digests: Mapping[str, int]) -> InputMarks:
        """The marks a checkpoint recorded: per sender what its state has seen (so
        everything accepted is delivered), with the digest through it (None when the
        checkpoint has none for a sender: it predates digests)."""
        marks = cls()
        for sender, delivered in inputs.items():
            marks.senders[sender] = SenderMarks(delivered, digests.get(sender))
        return marks

    # -- what is known -------------------------------------------------------------------

    @property
    def accepted(self) -> dict[str, int]:
        """Per sender, the last message accepted into the log (a copy)."""
        return {sender: marks.accepted for sender, marks in self.senders.items()}

    @property
    def delivered(self) -> dict[str, int]:
        """Per sender, the last message delivered to the binding (a copy; senders with
        nothing delivered yet are left out, as a checkpoint leaves them out)."""
        return {
            sender: marks.delivered for sender, marks in self.senders.items() if marks.delivered
        }

    def delivered_digests(self) -> dict[str, int]:
        """Per sender with a known digest, the CRC-32 of messages 1..delivered (what a
        checkpoint records beside ``delivered``)."""
        return {
            sender: marks.delivered_digest
            for sender, marks in self.senders.items()
            if marks.delivered and marks.delivered_digest is not None
        }

    def accepted_through(self, sender: str) -> int:
        marks = self.senders.get(sender)
        return 0 if marks is None else marks.accepted

    def resume_point(self, sender: str) -> tuple[int, int | None]:
        """The last message accepted from ``sender`` and the CRC-32 of 1..it (None: not
        known): what a ReplayFrom tells the sender. A new sender resumes from 0, whose
        digest is the CRC-32 of no bytes, 0."""
        marks = self.senders.get(sender)
        if marks is None:
            return 0, 0
        return marks.accepted, marks.accepted_digest

    # -- the sequence check and acceptance -----------------------------------------------

    def verdict(self, sender: str, first_seq: int, count: int) -> InputVerdict:
        return verdict(self.accepted_through(sender), first_seq, count)

    def expect(self, sender: str, first_seq: int, count: int) -> None:
        """Raise ``InputSequenceError`` unless the batch is the next one from ``sender``."""
        marks = self.senders.get(sender)
        accepted = 0 if marks is None else marks.accepted
        if first_seq != accepted + 1 or count < 1:
            raise InputSequenceError(sender, first_seq, count, accepted)

    def record(
        self, sender: str, first_seq: int, count: int, messages: bytes | bytearray | memoryview
    ) -> None:
        """The batch went into the log (``expect`` passed for it just before): move the
        accepted mark past it and chain its bytes into the digest."""
        marks = self.senders.get(sender)
        if marks is None:
            marks = self.senders[sender] = SenderMarks()
        last = first_seq + count - 1
        marks.accepted = last
        digest = marks.accepted_digest
        if digest is not None:
            digest = crc32(messages, digest)
            marks.accepted_digest = digest
            marks.pending.append((last, digest))

    def accept(
        self, sender: str, first_seq: int, count: int, messages: bytes | bytearray | memoryview
    ) -> None:
        """``expect``, then ``record``."""
        self.expect(sender, first_seq, count)
        self.record(sender, first_seq, count, messages)

    def fold(self, pages: Iterable[tuple[int, Page]]) -> None:
        """Accept what ``pages`` (in log order, after these marks) hold, and their trims.

        A group that does not continue its sender's numbers is a damaged log:
        ``LogGapError`` naming the page.
        """
        trims = self.trims
        for _, page in pages:
            for group in page.groups:
                try:
                    self.accept(group.source, group.first_seq, group.count, group.messages)
                except InputSequenceError as error:
                    raise LogGapError(f"page {page.sequence}: {error}") from error
            for destination, seq in page.trims:
                if seq > trims.get(destination, 0):
                    trims[destination] = seq

    # -- delivery --------------------------------------------------------------------------

    def deliver(self, page: Page) -> None:
        """The binding was given ``page`` (accepted, or folded, before): move the delivered
        marks past it. The digest through a group was computed when its last batch was
        accepted (a group may merge several batches); a group accepted elsewhere (none
        is, today) has its bytes read again."""
        senders = self.senders
        for group in page.groups:
            marks = senders.get(group.source)
            if marks is None:
                marks = senders[group.source] = SenderMarks()
            last_seq = group.first_seq + group.count - 1
            marks.delivered = last_seq
            digest = marks.delivered_digest
            if digest is None:
                continue
            pending = marks.pending
            mark = None
            while pending and pending[0][0] <= last_seq:
                mark = pending.popleft()
            if mark is not None and mark[0] == last_seq:
                marks.delivered_digest = mark[1]
            else:
                marks.delivered_digest = crc32(group.messages, digest)
