"""The replica board: where standbys say how far they have replayed.

A standby cannot write the log (it does not hold the lease), yet ``ambrosia status``
must show every standby and its lag. So each one writes a small JSON note beside the
log, under a name of its own (``replica_id``: host and process), every
``StandbySettings.board_interval_s``, and removes it when it stops or becomes primary.
The note is advisory: it never takes part in recovery, fencing or the audit. A note
whose ``updated`` time is old belongs to a standby that died without removing it (a
SIGKILL); ``ambrosia status`` shows it as silent, and the next standby to write notes
removes notes silent for longer than ``stale_after_s``, and notes of processes on its own
host that no longer exist (``prune_notes``); a new primary does the same as it takes over.

Backends offer the board through three optional methods (``ReplicaBoard``):
file ``replicas/<id>.json``; s3 ``replicas/<id>``; azblob ``replicas/<id>`` blobs.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import orjson

__all__ = [
    "ReplicaBoard",
    "ReplicaNote",
    "board_of",
    "decode_note",
    "local_replica_id",
    "prune_notes",
]

# Notes are small; anything larger is not a note.
NOTE_BYTES_MAX = 4096


@runtime_checkable
class ReplicaBoard(Protocol):
    async def write_replica_note(self, replica_id: str, data: bytes) -> None: ...

    async def list_replica_notes(self) -> list[tuple[str, bytes]]: ...

    async def remove_replica_note(self, replica_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ReplicaNote:
    """One standby's progress, as of ``updated`` (wall-clock seconds)."""

    replica_id: str
    pid: int
    host: str
    role: str
    checkpoint: int
    replayed_sequence: int
    log_end_sequence: int
    lag_pages: int
    lag_s: float
    updated: float

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))


def decode_note(data: bytes) -> ReplicaNote | None:
    """The note in ``data``, or None if it is not one (a foreign or torn object)."""
    if len(data) > NOTE_BYTES_MAX:
        return None
    try:
        record: dict[str, Any] = orjson.loads(data)
        return ReplicaNote(
            replica_id=str(record["replica_id"]),
            pid=int(record["pid"]),
            host=str(record["host"]),
            role=str(record["role"]),
            checkpoint=int(record["checkpoint"]),
            replayed_sequence=int(record["replayed_sequence"]),
            log_end_sequence=int(record["log_end_sequence"]),
            lag_pages=int(record["lag_pages"]),
            lag_s=float(record["lag_s"]),
            updated=float(record["updated"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def local_replica_id() -> str:
    """This process's name on the board: host and pid, safe in a file or object name."""
    host = "".join(c if c.isalnum() or c in "-." else "-" for c in socket.gethostname())
    return f"{host[:64]}-{os.getpid()}"


def board_of(store: object) -> ReplicaBoard | None:
    """The store's board, looking through wrappers (fault injection) that forward calls."""
    seen = 0
    while store is not None and seen < 4:
        if isinstance(store, ReplicaBoard):
            return store
        store = getattr(store, "inner", None)
        seen += 1
    return None


def is_gone(note: ReplicaNote, now: float, stale_after_s: float) -> bool:
    """Whether the note's standby is gone: a dead process on this host, or silent too long."""
    if now - note.updated > stale_after_s:
        return True
    if note.host != socket.gethostname() or note.pid == os.getpid():
        return False
    try:
        os.kill(note.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


async def prune_notes(board: ReplicaBoard, stale_after_s: float) -> int:
    """Remove the notes of standbys that are gone (``is_gone``); how many were removed."""
    removed = 0
    now = time.time()
    for replica_id, data in await board.list_replica_notes():
        note = decode_note(data)
        if note is None or is_gone(note, now, stale_after_s):
            await board.remove_replica_note(replica_id)
            removed += 1
    return removed
