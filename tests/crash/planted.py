"""Planted bugs: known-bad variants of the durability and sequencing code.

Each is a context manager that patches the product for as long as it is entered (never
in the product path), and each must be caught by the crash simulation
(``ambrosia.testing.simulation``) on the seeds that ``test_planted_bugs`` pins. Run as
a script to see how often given seeds catch one (to choose new seeds)::

    python tests/crash/planted.py commit_before_durable file 0-40 [repetitions]
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ambrosia.backends import file
from ambrosia.coordinator import links
from ambrosia.coordinator.binding_port import BindingState
from ambrosia.coordinator.committer import Committer
from ambrosia.coordinator.runtime import Runtime
from ambrosia.protocol.checkpoint import CheckpointState, OutputState
from ambrosia.protocol.inputs import InputMarks
from ambrosia.protocol.outputs import OutputStream


@contextlib.contextmanager
def _replaced(owner: object, name: str, value: object) -> Iterator[None]:
    """``owner.name`` is ``value`` inside the block; afterwards exactly what it was."""
    own = vars(owner)
    had = name in own
    previous = own.get(name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if had:
            setattr(owner, name, previous)
        else:
            delattr(owner, name)


@contextlib.contextmanager
def commit_before_durable() -> Iterator[None]:
    """The durable callback (which sends the Commits) runs before the page's append."""
    start_write = Committer._start_write

    async def early(self: Committer) -> object:
        marks = dict(self._pending_marks)  # what the page about to be written carries
        if marks:
            self._on_durable(marks)
        return await start_write(self)

    with _replaced(Committer, "_start_write", early):
        yield


@contextlib.contextmanager
def no_dsync() -> Iterator[None]:
    """Chunks opened without O_DSYNC: an append returns with its page only cached.

    The file store reads ``os.O_DSYNC`` from its ``os`` (the power-loss shim while the
    simulation runs); a zero there is a store that never asks for it.
    """
    with _replaced(file.os, "O_DSYNC", 0):
        yield


@contextlib.contextmanager
def no_fsync() -> Iterator[None]:
    """Every fsync skipped: checkpoints, metadata, the epoch file and new names."""
    with _replaced(file.os, "fsync", lambda fd: None):
        yield


def _resume_off_by(delta: int) -> Callable[[], contextlib.AbstractContextManager[None]]:
    @contextlib.contextmanager
    def patch() -> Iterator[None]:
        """The receiver names its resume point one off on a reconnection (a first
        connection, at 0, is right), with the digest of what it really holds."""
        resume_point = InputMarks.resume_point

        def off(self: InputMarks, sender: str) -> tuple[int, int | None]:
            accepted, digest = resume_point(self, sender)
            return accepted + delta if accepted > 0 else accepted, digest

        with _replaced(InputMarks, "resume_point", off):
            yield

    return patch


resume_too_low = _resume_off_by(-1)
resume_too_high = _resume_off_by(1)


@contextlib.contextmanager
def resend_without_dedupe() -> Iterator[None]:
    """The sender ignores the receiver's resume point: it resends everything it has not
    seen acknowledged, and regenerated output the receiver already logged goes out again."""
    rewind = OutputStream.rewind

    def ignoring(self: OutputStream, resume_after: int, digest: int | None = None) -> None:
        rewind(self, self.acked_through)

    with _replaced(OutputStream, "rewind", ignoring):
        yield


@contextlib.contextmanager
def trim_before_acknowledgement() -> Iterator[None]:
    """Output is freed (and its trim point logged) as soon as it is sent, before the
    receiver's Commit says it is durable there."""
    flush = links.OutgoingLink.flush

    def freeing(self: links.OutgoingLink) -> None:
        flush(self)
        stream = self.stream
        if stream.inflight:
            self.acked(stream.inflight[-1].last_seq)

    with _replaced(links.OutgoingLink, "flush", freeing):
        yield


@contextlib.contextmanager
def checkpoint_without_output_buffers() -> Iterator[None]:
    """Checkpoints record each output stream's numbers but not its unacknowledged messages."""
    snapshot = Runtime._snapshot

    def bare(self: Runtime, binding: BindingState, **where: int) -> CheckpointState:
        state = snapshot(self, binding, **where)
        outputs = {
            destination: OutputState(output.next_seq, output.acked_through, [])
            for destination, output in state.outputs.items()
        }
        return dataclasses.replace(state, outputs=outputs)

    with _replaced(Runtime, "_snapshot", bare):
        yield


MUTANTS: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
    "commit_before_durable": commit_before_durable,
    "no_dsync": no_dsync,
    "no_fsync": no_fsync,
    "resume_too_low": resume_too_low,
    "resume_too_high": resume_too_high,
    "resend_without_dedupe": resend_without_dedupe,
    "trim_before_acknowledgement": trim_before_acknowledgement,
    "checkpoint_without_output_buffers": checkpoint_without_output_buffers,
}


def _main(arguments: list[str]) -> None:
    import random

    from ambrosia.testing.powerloss import PowerLossDisk
    from ambrosia.testing.simulation import run_seed

    name, backend, seeds = arguments[:3]
    repetitions = int(arguments[3]) if len(arguments) > 3 else 3
    first, _, last = seeds.partition("-")
    with PowerLossDisk(random.Random(0)).installed() as disk, MUTANTS[name]():
        for seed in range(int(first), int(last or first) + 1):
            caught: list[str] = []
            for _ in range(repetitions):
                verdict = run_seed(seed, backend, disk=disk, stall_s=5.0)
                caught.append(verdict.violations[0][:150] if verdict.violations else "")
            hits = sum(1 for violation in caught if violation)
            print(f"seed {seed}: caught {hits}/{repetitions}  {next(filter(None, caught), '')}")
            sys.stdout.flush()


if __name__ == "__main__":
    _main(sys.argv[1:])
