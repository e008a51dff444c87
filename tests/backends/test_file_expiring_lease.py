"""The file store's expiring lease: a holder paused in a mutation does not hold a takeover up.

With ``lease_duration_s`` set, every mutation of the file store checks its epoch inside a
cross-process turn (a flock), and a takeover replaces the epoch inside the same turn. A
holder stopped while it holds the turn (SIGSTOP, a frozen VM) holds every takeover up
until it resumes. Seen in a full test run: a primary paused during a metadata swap (its
temporary file written and being synced, the rename not done) kept its standby from
taking over for a whole minute. The slow part of each mutation (the fsync of a temporary
file or of the directory) is outside the turn; inside it are only the epoch check and
the rename, create or unlink it guards. Here the holder is paused, in a thread, at the
first fsync of the operation, and another store of the same directory must take the
lease meanwhile.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from ambrosia.backends import file, open_store
from ambrosia.backends.base import Lease, Meta
from ambrosia.backends.file import FileLogStore
from ambrosia.errors import LeaseLostError

LEASE_S = 0.3
PAUSE_S = 5.0  # the paused holder resumes after this at the latest (the test's own bound)


class PauseAtFirstSync:
    """Once armed, the first durable write (a temporary file's, the directory's fsync, a
    page's write) stops its thread until ``resume`` is set: the holder "paused" in the
    middle of a mutation."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = False
        self.paused = threading.Event()
        self.resume = threading.Event()
        self._lock = threading.Lock()
        for name in ("_write_durable_temporary", "_fsync_directory", "_write_all"):
            monkeypatch.setattr(file, name, self._pausing(getattr(file, name)))

    def _pausing(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def pausing(*args: Any) -> Any:
            with self._lock:
                pause = self.armed and not self.paused.is_set()
                if pause:
                    self.paused.set()
            if pause:
                self.resume.wait(PAUSE_S)
            return original(*args)

        return pausing


def _operation(store: FileLogStore, lease: Lease, name: str) -> Callable[[], Awaitable[object]]:
    operations: dict[str, Callable[[], Awaitable[object]]] = {
        "swap_meta": lambda: store.swap_meta(
            lease, expected=None, new=Meta(checkpoint=None, epoch=lease.epoch)
        ),
        "create_chunk": lambda: store.create_chunk(lease, 0),
        "write_checkpoint": lambda: store.write_checkpoint(lease, 0, b"state"),
        "delete_before": lambda: store.delete_before(lease, 0),
        # On a thread, as the committer writes large pages (a small one written inline
        # would pause this whole test's event loop, as SIGSTOP pauses a process).
        "append": lambda: anyio.to_thread.run_sync(
            lambda: store.append_blocking(lease, 0, expected_offset=0, data=b"page")
        ),
    }
    return operations[name]


@pytest.mark.parametrize(
    "operation", ["swap_meta", "create_chunk", "write_checkpoint", "delete_before", "append"]
)
def test_a_holder_paused_in_a_mutation_does_not_hold_up_a_takeover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    pause = PauseAtFirstSync(monkeypatch)

    async def main() -> None:
        url = f"file://{tmp_path}"
        holder = await open_store(url, "a", lease_duration_s=LEASE_S)
        successor = await open_store(url, "a", lease_duration_s=LEASE_S)
        assert isinstance(holder, FileLogStore) and isinstance(successor, FileLogStore)
        lease = await holder.acquire_lease()
        if operation == "append":
            await holder.create_chunk(lease, 0)
        outcome: list[object] = []

        async def run_paused_operation() -> None:
            try:
                outcome.append(await _operation(holder, lease, operation)())
            except LeaseLostError as error:
                outcome.append(error)

        async with anyio.create_task_group() as tasks:
            pause.armed = True
            tasks.start_soon(run_paused_operation)
            assert await anyio.to_thread.run_sync(pause.paused.wait, PAUSE_S)
            started = time.monotonic()
            taken = await successor.acquire_lease(wait_s=PAUSE_S)
            took_s = time.monotonic() - started
            still_paused = not pause.resume.is_set()
            pause.resume.set()
        assert still_paused, f"the takeover waited for the paused holder ({took_s:.1f} s)"
        assert taken.epoch == lease.epoch + 1
        assert took_s < PAUSE_S / 2
        # Resumed, the old holder either finishes what it did before the takeover (the
        # step it was paused after) or is fenced; it never writes under the new epoch.
        if operation in ("swap_meta", "write_checkpoint", "append"):
            assert len(outcome) == 1 and isinstance(outcome[0], LeaseLostError), outcome
            meta, _ = await successor.read_meta()
            assert meta is None
            assert await successor.list_checkpoints() == []
        if operation == "append":
            assert await successor.read_chunk(0) == b"", "the fenced page is in no chunk"
        with pytest.raises(LeaseLostError):
            await holder.create_chunk(lease, 5)
        # The new holder works as usual.
        await successor.swap_meta(taken, expected=None, new=Meta(checkpoint=None, epoch=2))
        await successor.write_checkpoint(taken, 1, b"new")
        assert await successor.list_checkpoints() == [1]
        await holder.close()
        await successor.close()

    try:
        anyio.run(main)
    finally:
        pause.resume.set()


def test_appends_and_renewals_take_no_turn(tmp_path: Path) -> None:
    """The turn is held here, as by a holder paused in it, for 3 s: an append and a
    renewal of the live holder finish at once anyway."""
    released_after_s = 3.0

    async def main() -> None:
        store = await open_store(f"file://{tmp_path}", "a", lease_duration_s=LEASE_S)
        lease = await store.acquire_lease()
        await store.create_chunk(lease, 0)
        turn = os.open(tmp_path / "a" / "write.lock", os.O_RDWR)
        fcntl.flock(turn, fcntl.LOCK_EX)
        release = threading.Timer(released_after_s, fcntl.flock, (turn, fcntl.LOCK_UN))
        release.start()
        try:
            started = time.monotonic()
            await store.append(lease, 0, expected_offset=0, data=b"page")
            await store.renew_lease(lease)
            took_s = time.monotonic() - started
        finally:
            release.join()
            os.close(turn)
        assert took_s < released_after_s / 2
        assert await store.read_chunk(0) == b"page"
        await store.close()

    anyio.run(main)
