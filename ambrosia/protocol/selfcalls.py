"""The self-call audit: replay must regenerate the self-calls the log holds.

An immortal's calls to itself go into its own log like any input; on replay its handlers
make them again, and each regenerated one is checked against the logged one at the same
sequence number before it is dropped as already consumed. Sans-IO: pages in, a
``ReplayDivergenceError`` out.
"""

from __future__ import annotations

from ambrosia.errors import ReplayDivergenceError
from ambrosia.log.page import Page
from ambrosia.wire.messages import TYPE_RPC, frame_prefix
from ambrosia.wire.varint import decode_zigzag_long

__all__ = ["SelfCallAudit"]


class SelfCallAudit:
    """Checks replay against the log: a regenerated self-call must be the logged one.

    Only the method and the kind are compared, not the arguments: the paper's idiom for
    non-determinism (fork a self-call carrying ``time.time()``) regenerates different
    arguments on replay on purpose, and the logged ones win. A different method at the
    same position means the code no longer does what it did: replay has diverged.
    """

    def __init__(self, instance: str, pages: list[tuple[int, Page]]) -> None:
        self.instance = instance
        self.logged: dict[int, bytes] = {}
        self.add_pages(pages)

    def add_pages(self, pages: list[tuple[int, Page]]) -> None:
        """Remember the self-calls ``pages`` hold (a standby adds pages as it reads them)."""
        instance = self.instance
        for _, page in pages:
            for group in page.groups:
                if group.source == instance:
                    self.index(group.first_seq, group.messages)

    def index(self, first_seq: int, messages: bytes | memoryview) -> None:
        """Remember the self-calls of one logged group (``first_seq`` on)."""
        position = 0
        seq = first_seq
        while position < len(messages):
            size, start = decode_zigzag_long(messages, position)
            self.logged[seq] = _call_head(messages, start, start + size)
            position = start + size
            seq += 1

    def logged_message(self, seq: int) -> bytes | None:
        """Self-call ``seq`` as logged, if it is not an RPC (an InitialMessage)."""
        logged = self.logged.get(seq)
        if logged is None or logged[:1] == b"\x00":
            return None
        return frame_prefix(len(logged)) + logged

    def check(self, seq: int, head: bytes) -> None:
        logged = self.logged.get(seq)
        if logged is None:
            return  # consumed before the checkpoint: nothing left to compare with
        _, start = decode_zigzag_long(head, 0)
        regenerated = _call_head(head, start, len(head))
        if regenerated != logged:
            raise ReplayDivergenceError(
                f"{self.instance}: replay diverged at self-call {seq}: the log holds a call "
                f"with head {logged.hex()}, replay produced {regenerated.hex()}"
            )


def _call_head(data: bytes | memoryview, start: int, end: int) -> bytes:
    """Type, reserved byte, method id and kind of the RPC whose body starts at ``start``.

    Any other message (an InitialMessage from a binding process: the first start) is
    compared whole, type byte and data.
    """
    if data[start] != TYPE_RPC:
        return bytes(data[start:end])
    _, kind_at = decode_zigzag_long(data, start + 2)
    return bytes(data[start : kind_at + 1])
