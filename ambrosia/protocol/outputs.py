"""Output streams: numbered, bounded, resendable output to one destination.

Every ordered pair (this immortal, destination) numbers this immortal's messages 1, 2,
3, ... Both sides count; numbers never travel per message. A stream keeps every message
until the destination acknowledges it as durably logged (``ack``), so it can resend after
a reconnection or a crash of either side:

- ``open``: the batch being filled by the binding (a bytearray of framed messages).
- ``unsent``: sealed batches not yet written to the current connection.
- ``inflight``: batches written but not yet acknowledged.

On a (re)connection the receiver names its resume point (``rewind``): everything up to it
is dropped, the rest is sent again from the first message after it. Messages at or below
``drop_through`` are not even buffered: replay after a crash regenerates output that the
receiver already has (known from logged trim points or from the receiver), and dropping it
is the sender-side deduplication of the protocol. The receiver never deduplicates.

Replay is checked against what the receiver got. The stream keeps ``digest``, the CRC-32
of its framed messages 1..``digest_through`` back to back, where ``digest_through`` is the
last message that left the buffer (acknowledged, or dropped as already consumed). CRC-32
chains (``crc32(b, crc32(a)) == crc32(a + b)``), so it is updated once per freed segment
and never per message while running; only during replay, where regenerated messages are
dropped one by one, is it updated per message. The receiver keeps the same digest of what
it accepted and sends it with its resume point (``rewind``); when ``digest_through``
reaches that point the two are compared, and a difference (replay regenerated other calls
or results than the ones the receiver holds) is reported to ``on_checked``. A stream
restored from a checkpoint written before digests existed has ``digest`` None: nothing to
compare until it is rebuilt (never, for that stream's life).

The stream is bounded by ``buffer_bytes_max``: when it holds more, it tells its owner
(``on_blocked``) once, and again on its next ``add`` if the owner asks (``report_again``),
until acknowledgements bring it back under the bound (``on_unblocked``). The owner (the
runtime) reacts in two ways:

- input from the destination is held (its incoming link stops reading): every result
  this immortal sends it answers one of its calls, so a peer that does not read its
  results stops being able to send calls, and only its own connection stalls;
- when the application itself forks or calls into the full stream, the dispatcher stops
  running handlers until it drains (the producer slows down). A result never stops the
  dispatcher (the peer that does not read it must not stall everyone else), and during
  replay nothing does (the regenerated output goes out once the links are up).

The bound that results: ``buffer_bytes_max`` plus one handler's output, plus the results
of the calls from that peer that were already logged when its input was held (at most
what the committer holds undelivered, ``Config.delivery_backlog_bytes_max``), plus what
replay regenerates.

Two peers over the bound toward each other. Holding a peer's input stops its calls, but
also its results and everything else it sends on that connection. When A's results to B
and B's results to A are both over the bound at once, each holds the other's input, so
neither reads what would drain the other's stream: a deadlock that no reconnection
unties (admission holds again at once), and no deadline ends (held input is our delay).
Two real runtimes making awaited calls to each other with large results reach it in
their first round (``tests/coordinator/test_mutual_backpressure.py``).

A receiver that holds a sender's input therefore says so on that connection
(``InputHeld``, receiver -> sender), and the sender keeps it until the connection drops.
The hold exists against a peer that does not read its results; a peer that says it
holds ours for the same reason is alive and waiting for us, so we read its input after
all (``Runtime._hold_wanted``): its results drain its stream, it reads ours again, and
ours drains. At any moment at least one of the two reads, so the pair makes progress.
A peer that only claims to hold (and floods calls without reading) is still held once
its results pass ``Config.output_buffer_paused_peer_bytes_max``: the hard bound. Two
real runtimes can both pass it only when a peer's calls, sent before its own stream
went over, ask for more than that many bytes of results (its dispatcher stops before
sending more calls into a full stream); keep the hard bound large against that.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ambrosia.protocol.crc import crc32
from ambrosia.wire.varint import decode_zigzag_long

logger = logging.getLogger("ambrosia.outputs")


@dataclass(slots=True)
class Segment:
    """A sealed batch: ``count`` framed messages numbered from ``first_seq``."""

    first_seq: int
    count: int
    data: bytes | bytearray

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1


def skip_messages(data: bytes | bytearray | memoryview, count: int) -> int:
    """Byte offset just after the first ``count`` framed messages of ``data``."""
    position = 0
    for _ in range(count):
        size, position = decode_zigzag_long(data, position)
        position += size
    return position


class OutputStream:
    """Output to one destination; see the module docstring."""

    def __init__(
        self,
        destination: str,
        *,
        buffer_bytes_max: int,
        batch_bytes_max: int,
        on_dirty: Callable[[OutputStream], None],
        on_blocked: Callable[[OutputStream], None],
        on_unblocked: Callable[[OutputStream], None],
    ) -> None:
        self.destination = destination
        self.buffer_bytes_max = buffer_bytes_max
        self.batch_bytes_max = batch_bytes_max
        self._on_dirty = on_dirty
        self._on_blocked = on_blocked
        self._on_unblocked = on_unblocked
        self.next_seq = 0  # number of the last message produced
        self.drop_through = 0
        self.acked_through = 0
        self.open = bytearray()
        self.open_first_seq = 1
        self.unsent: deque[Segment] = deque()
        self.inflight: deque[Segment] = deque()
        self.sealed_bytes = 0  # bytes of unsent and in-flight segments
        # ``add`` compares the open batch's length with this one number: it is the point
        # where the batch must be sealed or the buffer bound is crossed, whichever is first.
        self._check_at = 0
        # True while a flush of this stream is scheduled with the owner (on_dirty called).
        self.dirty = False
        self.blocked = False
        self._report_again = False
        self.trim_logged = 0  # highest ack already written into a log page
        # Called with (seq, head) for each regenerated message dropped as already
        # consumed; recovery uses it to check replay against the log.
        self.on_drop: Callable[[int, bytes], None] | None = None
        # CRC-32 of messages 1..digest_through (the ones no longer buffered); None: unknown.
        self.digest: int | None = 0
        self.digest_through = 0
        # (seq, the receiver's digest through seq): compared when digest_through gets there.
        self._expected: tuple[int, int] | None = None
        # Called with (stream, seq, receiver's digest, ours, during_add) at each check
        # (a mismatch when the two differ); ``during_add``: made while a regenerated
        # message was being added (replay).
        self.on_checked: Callable[[OutputStream, int, int, int, bool], None] | None = None
        # Set with ``record_adds`` (replay only).
        self._on_added: Callable[[int], None] | None = None
        self._update_check_at()

    @property
    def open_count(self) -> int:
        """Messages in the open batch: they are numbered open_first_seq..next_seq."""
        return self.next_seq - self.open_first_seq + 1 if self.open else 0

    @property
    def buffered_bytes(self) -> int:
        return self.sealed_bytes + len(self.open)

    @property
    def has_unsent(self) -> bool:
        return bool(self.unsent or self.open)

    def record_adds(self, on_added: Callable[[int], None] | None) -> None:
        """Call ``on_added`` with the number of the first message of every later ``add``
        and ``add_run`` (after it is added, or dropped as consumed); None stops it.

        For recovery, which notes where replay regenerates each message. The running
        path pays nothing for it: while it is set, every add takes the slow path
        (``_check_at`` is 0), and only the slow path looks at it.
        """
        self._on_added = on_added
        self._update_check_at()

    def _update_check_at(self) -> None:
        if self._on_added is not None:
            self._check_at = 0
            return
        if self.blocked:
            # Already reported: only sealing is left, unless the owner wants to hear again.
            self._check_at = 0 if self._report_again else self.batch_bytes_max
            return
        room = max(self.buffer_bytes_max - self.sealed_bytes, 0) + 1
        self._check_at = min(self.batch_bytes_max, room)

    # -- producing (the hot path) ------------------------------------------------------

    def add(self, head: bytes, body: bytes) -> None:
        """Append one framed message (``head`` + ``body``)."""
        seq = self.next_seq + 1
        self.next_seq = seq
        if seq <= self.drop_through:
            # Replay only: a regenerated message the receiver already has.
            if self.digest is not None:
                self.digest = crc32(body, crc32(head, self.digest))
            self.digest_through = seq
            if self._expected is not None and self._expected[0] == seq:
                self._compare(during_add=True)
            if self.on_drop is not None:
                self.on_drop(seq, head)
            if self._on_added is not None:
                self._on_added(seq)
            return
        open_batch = self.open
        if not open_batch:
            self.open_first_seq = seq
        open_batch += head
        open_batch += body
        if len(open_batch) >= self._check_at:
            self._limits_reached(seq)
        if not self.dirty:
            self.dirty = True
            self._on_dirty(self)

    def add_run(self, data: bytes, count: int) -> None:
        """Append ``count`` framed messages at once (``data``: back to back).

        For a binding process's runs of calls (``socket_binding``); the caller adds one
        by one while regenerated messages may still be dropped (``drop_through`` ahead).
        """
        first = self.next_seq + 1
        assert first > self.drop_through, "a run that may hold consumed messages"
        self.next_seq += count
        open_batch = self.open
        if not open_batch:
            self.open_first_seq = first
        open_batch += data
        if len(open_batch) >= self._check_at:
            self._limits_reached(first)
        if not self.dirty:
            self.dirty = True
            self._on_dirty(self)

    def _limits_reached(self, first_added: int) -> None:
        if self._on_added is not None:
            self._on_added(first_added)
        if len(self.open) >= self.batch_bytes_max:
            self.seal()
        if self.buffered_bytes > self.buffer_bytes_max and (not self.blocked or self._report_again):
            self.blocked = True
            self._report_again = False
            self._update_check_at()
            self._on_blocked(self)

    def report_again(self) -> None:
        """Call ``on_blocked`` again on the next ``add`` if the stream is still over."""
        if self.blocked:
            self._report_again = True
            self._update_check_at()

    def seal(self) -> None:
        """Close the open batch so it can be sent."""
        if self.open:
            count = self.next_seq - self.open_first_seq + 1
            self.unsent.append(Segment(self.open_first_seq, count, self.open))
            self.sealed_bytes += len(self.open)
            self.open = bytearray()
            self._update_check_at()

    def hand_out(self, send: Callable[[Segment], bool]) -> bool:
        """Seal, then give each unsent batch to ``send`` in order; the ones it takes
        (True) are in flight. Stops at the first it refuses (a full connection, a full
        page): that one and the rest stay unsent, and the stream stays dirty, so the
        next ``add`` does not ask for another flush; whoever refused asks again when it
        has room. True when everything went out."""
        self.seal()
        unsent = self.unsent
        inflight = self.inflight
        while unsent:
            if not send(unsent[0]):
                return False
            inflight.append(unsent.popleft())
        self.dirty = False
        return True

    def take_unsent(self) -> list[Segment]:
        """Seal and return what the current connection has not been sent; mark it in flight."""
        segments: list[Segment] = []

        def take(segment: Segment) -> bool:
            segments.append(segment)
            return True

        self.hand_out(take)
        return segments

    # -- acknowledgements and reconnection ----------------------------------------------

    def ack(self, through: int) -> None:
        """The destination durably logged everything up to ``through``."""
        if through <= self.acked_through:
            return
        self.acked_through = through
        self.drop_through = max(self.drop_through, through)
        self._drop_front(self.inflight, through)
        self._drop_front(self.unsent, through)
        if self.open and through >= self.open_first_seq:
            self._trim_open(through)
        self._check_unblocked()

    def rewind(self, resume_after: int, digest: int | None = None) -> None:
        """A new connection: the receiver has everything up to ``resume_after``.

        ``digest``: the receiver's CRC-32 of messages 1..``resume_after``, compared with
        ours once this stream's own digest gets there (at once if it has produced them).
        """
        self._expected = None
        self.inflight.extend(self.unsent)
        self.unsent = self.inflight
        self.inflight = deque()
        if resume_after < self.acked_through:
            # The receiver lost what it had acknowledged: its log is behind ours. Our Hello
            # carried ``acked_through``, so a receiver that checks it stops on its own
            # (``Runtime._admit``: LostAcknowledgedError); this one answered anyway, or our
            # acknowledged point moved after the Hello. What it lost was freed here and
            # cannot be resent: say so once, loudly, and go on from what it acknowledged.
            logger.error(
                "%s resumes after call %d but had acknowledged calls up to %d: its log "
                "lost acknowledged calls %d..%d, which cannot be resent",
                self.destination,
                resume_after,
                self.acked_through,
                resume_after + 1,
                self.acked_through,
            )
            resume_after = self.acked_through
            digest = None  # its digest covers other messages than ours: nothing to compare
        self.acked_through = resume_after
        self.drop_through = max(self.drop_through, resume_after)
        self._drop_front(self.unsent, resume_after)
        if self.open and resume_after >= self.open_first_seq:
            self._trim_open(resume_after)
        if digest is not None and resume_after >= self.digest_through:
            self._expected = (resume_after, digest)
            if resume_after == self.digest_through:
                self._compare(during_add=False)
        self._check_unblocked()

    def _compare(self, *, during_add: bool) -> None:
        expected = self._expected
        assert expected is not None
        self._expected = None
        seq, theirs = expected
        ours = self.digest
        if ours is not None and self.on_checked is not None:
            self.on_checked(self, seq, theirs, ours, during_add)

    def _freed(self, data: bytes | bytearray | memoryview, last_seq: int) -> None:
        """Messages through ``last_seq`` (``data``, in order) left the buffer."""
        if self.digest is not None:
            self.digest = crc32(data, self.digest)
        self.digest_through = last_seq

    def _drop_front(self, segments: deque[Segment], through: int) -> None:
        while segments and segments[0].first_seq <= through:
            segment = segments[0]
            if segment.last_seq <= through:
                segments.popleft()
                self.sealed_bytes -= len(segment.data)
                self._freed(segment.data, segment.last_seq)
                continue
            drop = through - segment.first_seq + 1
            cut = skip_messages(segment.data, drop)
            self._freed(memoryview(segment.data)[:cut], through)
            segments[0] = Segment(through + 1, segment.count - drop, segment.data[cut:])
            self.sealed_bytes -= cut
            break

    def _trim_open(self, through: int) -> None:
        drop = min(through - self.open_first_seq + 1, self.open_count)
        cut = skip_messages(self.open, drop)
        with memoryview(self.open) as view:
            self._freed(view[:cut], self.open_first_seq + drop - 1)
        del self.open[:cut]
        self.open_first_seq += drop

    def _check_unblocked(self) -> None:
        if self.blocked and self.buffered_bytes <= self.buffer_bytes_max:
            self.blocked = False
            self._report_again = False
            self._on_unblocked(self)
        self._update_check_at()

    # -- checkpoints ----------------------------------------------------------------

    def snapshot(self) -> tuple[int, int, list[Segment]]:
        """(next_seq, acked_through, every unacknowledged segment in order)."""
        segments = [*self.inflight, *self.unsent]
        if self.open:
            segments.append(Segment(self.open_first_seq, self.open_count, bytes(self.open)))
        return self.next_seq, self.acked_through, segments

    def restore(
        self,
        next_seq: int,
        acked_through: int,
        segments: list[Segment],
        digest: int | None = None,
    ) -> None:
        """State from a checkpoint; ``digest``: of the messages before the first segment
        (before ``next_seq + 1`` without segments), None when the checkpoint has none."""
        self.digest = digest
        self.digest_through = segments[0].first_seq - 1 if segments else next_seq
        self.next_seq = next_seq
        self.acked_through = acked_through
        self.drop_through = max(self.drop_through, acked_through)
        self.unsent = deque(segments)
        self.sealed_bytes = sum(len(segment.data) for segment in segments)
        self._update_check_at()
