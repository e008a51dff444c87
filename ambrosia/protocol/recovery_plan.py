"""The recovery plan: what a coordinator restores and replays, from a checkpoint and the
pages the log holds after it.

Sans-IO: the caller reads the log (``ambrosia.coordinator.recovery``) and acts on the
plan (restores the binding, acknowledges output streams up to the logged trims, replays
the pages, opens the committer with the input marks). Cold starts and hot standbys use
the same arithmetic, so a standby that takes over holds the marks a cold start would.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ambrosia.log.page import Page
from ambrosia.protocol.checkpoint import CheckpointState

__all__ = ["InputMarks", "RecoveryPlan", "kept_checkpoints", "plan_recovery"]


@dataclass(slots=True)
class InputMarks:
    """What the log holds, per peer: the last input sequence number logged from each
    sender (``accepted``: the committer's deduplication marks) and the highest trim point
    logged for each destination (``trims``: output it no longer has to keep)."""

    accepted: dict[str, int] = field(default_factory=dict)
    trims: dict[str, int] = field(default_factory=dict)

    def fold(self, pages: Iterable[tuple[int, Page]]) -> None:
        """Move the marks past ``pages`` (in log order)."""
        accepted = self.accepted
        trims = self.trims
        for _, page in pages:
            for group in page.groups:
                accepted[group.source] = group.last_seq
            for destination, seq in page.trims:
                if seq > trims.get(destination, 0):
                    trims[destination] = seq


@dataclass(frozen=True, slots=True)
class RecoveryPlan:
    """``marks``: after the checkpoint and every page; ``delivered``: per sender, what the
    checkpoint's state has seen (replay delivers the rest); ``delivered_sequence``: the
    last page in the checkpoint's state; ``next_sequence``: the next page to write."""

    marks: InputMarks
    delivered: dict[str, int]
    delivered_sequence: int
    next_sequence: int


def plan_recovery(checkpoint: CheckpointState, pages: list[tuple[int, Page]]) -> RecoveryPlan:
    marks = InputMarks(dict(checkpoint.inputs))
    marks.fold(pages)
    return RecoveryPlan(
        marks=marks,
        delivered=dict(checkpoint.inputs),
        delivered_sequence=checkpoint.resume_sequence - 1,
        next_sequence=pages[-1][1].sequence + 1 if pages else checkpoint.resume_sequence,
    )


def kept_checkpoints(
    loaded: CheckpointState, listed: Iterable[int], unusable: Iterable[int], keep: int
) -> list[tuple[int, int]]:
    """The (number, resume chunk) of the checkpoints retention must keep, oldest first.

    Older listed checkpoints count (the fallback to one needs the chunks from its resume
    chunk on); their resume chunk is N - 1 or N, and assuming N - 1 keeps whatever they
    might need. Unusable ones and any newer than the one loaded (written by a life that
    died before pointing the metadata at it) are not kept: retention deletes them by
    number once newer checkpoints exist.
    """
    skipped = set(unusable)
    older = {(n, max(n - 1, 0)) for n in listed if n < loaded.number and n not in skipped}
    return sorted(older | {(loaded.number, loaded.resume_chunk)})[-keep:]
