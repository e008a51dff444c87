"""Audits of an instance's log from outside, for crash runs: the log's own rules and more.

``audit_log`` reads a log the way every start does (``ambrosia.coordinator.recovery``:
chunks the metadata records exist, pages checksummed and in sequence, epochs never
down) and adds what only an observer of a whole run can check:

- Retention (``check_retention``): the checkpoint the metadata names exists and is used
  without falling back; each of the newest ``checkpoints_kept`` checkpoints at or below
  it anchors in the audited log (the fallback a damaged newest checkpoint would need);
  and at most ``checkpoints_kept + RETENTION_SLACK`` checkpoints exist at all.
- Stability across audits (``LogWitness``): a run audits a log many times (after every
  SIGKILL of its writer, while it is down, and at the end). A page, once seen whole, is
  seen again in the same chunk at the same offset with the same size and epoch until
  retention deletes it: pages are never rewritten, and a page seen durable never
  disappears from inside the kept log.
- One epoch per writer life (``LogWitness.check_epochs``): every process that took the
  lease printed its epoch; those epochs strictly increase from one start to the next;
  every page carries the epoch of one of them; along the page sequence, over every page
  any audit saw, epochs never go down, so each life's pages are one contiguous run.

Findings are returned as sentences naming the instance and what is wrong (a list of
violations), so a long run can report them all.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from ambrosia.backends import open_store
from ambrosia.backends.base import LogStore
from ambrosia.backends.retry import call_with_retry
from ambrosia.coordinator.recovery import LogReading, pages_after, read_checkpoint, recover
from ambrosia.coordinator.runtime import Config
from ambrosia.errors import AmbrosiaError

__all__ = ["RETENTION_SLACK", "LogWitness", "audit_log"]

# Checkpoints beyond ``checkpoints_kept`` a log may hold at the end of a run with kills,
# each deleted by the next checkpoint's retention: one left below the kept ones by a kill
# between the metadata swap and the delete, and one the metadata never named, written by
# a life killed between the checkpoint's write and the swap.
RETENTION_SLACK = 2


@dataclass(frozen=True, slots=True)
class _SeenPage:
    chunk: int
    offset: int
    size_bytes: int
    epoch: int


@dataclass(slots=True)
class LogWitness:
    """Every page the audits of one instance's log saw, by page sequence number."""

    instance: str
    pages: dict[int, _SeenPage] = field(default_factory=dict)
    audits: int = 0

    def witness(self, reading: LogReading) -> list[str]:
        """Add an audit's pages; a page that changed since an earlier audit is a violation."""
        self.audits += 1
        violations = []
        for chunk, scan in reading.scans:
            for page in scan.pages:
                seen = _SeenPage(chunk, page.offset, page.size_bytes, page.epoch)
                before = self.pages.setdefault(page.sequence, seen)
                if before != seen:
                    violations.append(
                        f"{self.instance}: page {page.sequence} changed between audits: "
                        f"{before} earlier, {seen} in audit {self.audits}"
                    )
        return violations

    def check_epochs(self, life_epochs: list[int]) -> list[str]:
        """``life_epochs``: the epoch each start of the instance took, in start order."""
        violations = []
        for earlier, later in itertools.pairwise(life_epochs):
            if later <= earlier:
                violations.append(
                    f"{self.instance}: a later start took epoch {later} after epoch {earlier} "
                    f"(lease epochs must strictly increase; all: {life_epochs})"
                )
        lives = set(life_epochs)
        previous_sequence: int | None = None
        previous_epoch = -1
        finished: set[int] = set()
        for sequence in sorted(self.pages):
            page = self.pages[sequence]
            if page.epoch not in lives:
                violations.append(
                    f"{self.instance}: page {sequence} (chunk {page.chunk} offset "
                    f"{page.offset}) has epoch {page.epoch}, which no start took {life_epochs}"
                )
            if page.epoch < previous_epoch:
                violations.append(
                    f"{self.instance}: page {sequence} has epoch {page.epoch} after page "
                    f"{previous_sequence} of epoch {previous_epoch}"
                )
            elif page.epoch != previous_epoch:
                if page.epoch in finished:
                    violations.append(
                        f"{self.instance}: the pages of epoch {page.epoch} are not contiguous "
                        f"(again at page {sequence})"
                    )
                finished.add(previous_epoch)
            previous_sequence, previous_epoch = sequence, page.epoch
        return violations


async def audit_log(
    log_url: str,
    instance: str,
    witness: LogWitness,
    *,
    checkpoints_kept: int | None = None,
) -> list[str]:
    """Audit ``instance``'s log (its writer must not be running); the violations found.

    ``checkpoints_kept``: also check retention (module docstring), as at a run's end.
    """
    store = await open_store(log_url, instance)
    try:
        try:
            reading = await recover(store, Config().page_bytes_max)
        except AmbrosiaError as error:
            return [f"{instance}: the log fails the audit every start runs: {error}"]
        violations = witness.witness(reading)
        if checkpoints_kept is not None:
            violations += await _check_retention(store, reading, checkpoints_kept)
        return violations
    finally:
        await store.close()


async def _check_retention(store: LogStore, reading: LogReading, kept: int) -> list[str]:
    instance = store.instance
    if reading.meta is None or reading.checkpoint is None or reading.audit is None:
        return [f"{instance}: the log has no checkpoint at the end of the run"]
    named = reading.meta.checkpoint
    violations = [
        f"{instance}: the metadata's checkpoint {named} cannot be used ({error}), recovery "
        f"falls back to checkpoint {reading.checkpoint.number}"
        for _, error in reading.skipped
    ]
    listed = await call_with_retry(store.list_checkpoints)
    if named not in listed:
        violations.append(f"{instance}: the metadata names checkpoint {named}, absent: {listed}")
    if len(listed) > kept + RETENTION_SLACK:
        violations.append(
            f"{instance}: {len(listed)} checkpoints kept ({listed}), more than "
            f"checkpoints_kept {kept} + {RETENTION_SLACK} left by kills"
        )
    assert named is not None
    for number in [n for n in listed if n <= named][-kept:]:
        try:
            pages_after(reading.audit, await read_checkpoint(store, number))
        except AmbrosiaError as error:
            violations.append(f"{instance}: kept checkpoint {number} does not anchor: {error}")
    return violations
