"""The recovery plan: what a coordinator restores and replays, from a checkpoint and the
pages the log holds after it.

Sans-IO: the caller reads the log (``ambrosia.coordinator.recovery``) and acts on the
plan (restores the binding, acknowledges output streams up to the logged trims, replays
the pages, opens the committer with the input marks). Cold starts and hot standbys use
the same arithmetic, so a standby that takes over holds the marks a cold start would.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ambrosia.log.page import Page
from ambrosia.protocol.checkpoint import CheckpointState
from ambrosia.protocol.inputs import InputMarks

__all__ = ["InputMarks", "RecoveryPlan", "kept_checkpoints", "plan_recovery"]


@dataclass(frozen=True, slots=True)
class RecoveryPlan:
    """``marks``: the checkpoint's, moved past every page (``InputMarks.fold``: accepted
    through the log's end, delivered through the checkpoint, which replay moves on);
    ``delivered_sequence``: the last page in the checkpoint's state; ``next_sequence``:
    the next page to write."""

    marks: InputMarks
    delivered_sequence: int
    next_sequence: int

    @property
    def delivered(self) -> dict[str, int]:
        """Per sender, what the checkpoint's state has seen (replay delivers the rest)."""
        return self.marks.delivered


def plan_recovery(checkpoint: CheckpointState, pages: list[tuple[int, Page]]) -> RecoveryPlan:
    """The plan for ``checkpoint`` and the pages after it; a damaged sequence of inputs
    in them is a ``LogGapError`` naming the page."""
    marks = InputMarks.from_checkpoint(checkpoint.inputs, checkpoint.input_digests)
    marks.fold(pages)
    return RecoveryPlan(
        marks=marks,
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
