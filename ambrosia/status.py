"""``ambrosia status NAME``: who runs an instance, and how far behind its standbys are.

Read live from the log, without the lease (it never writes):

- the primary: the process, host and address the current writer recorded in the log's
  metadata when it started (``MetadataKeeper.record_start``), and its epoch;
- the log: its chunks, its last page (sequence, epoch, chunk, offset) and the latest
  checkpoint the metadata names;
- the version: the catalog's ``current_version`` (and an upgrade it was asked, its
  ``upgrade_version``) beside the version the log's metadata records as having written
  its latest checkpoint (``ambrosia.upgrade.logged_code``): while an upgrade is under way
  the catalog names the new version as asked and the log still the old one; once the new
  code's checkpoint is durable, the log names the new version;
- each standby, from the replica board (``ambrosia.coordinator.replicas``): the page it
  has replayed through, its lag behind the log's last page in pages and in seconds
  (its own measure: how long since it was last caught up), and how old its note is. A
  note not rewritten for ``SILENT_AFTER_S`` is marked silent: its standby probably died;
- the checkpointer standby, if one runs (``ambrosia.coordinator.checkpointer``): its
  process, how far it replayed and the last candidate it wrote, and whether the latest
  checkpoint was adopted from a checkpointer (and from which).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from dataclasses import dataclass
from typing import Any

import orjson

from ambrosia.backends import LogStore, open_store
from ambrosia.backends.retry import DEFAULT_RETRY_POLICY, call_with_retry
from ambrosia.catalog import InstanceRecord
from ambrosia.coordinator.checkpointer import (
    STATUS_NAME,
    CheckpointerStatus,
    area_of,
    decode_status,
)
from ambrosia.coordinator.replicas import ReplicaNote, board_of, decode_note
from ambrosia.coordinator.standby import current_primary
from ambrosia.errors import NotFoundError
from ambrosia.log.page import PAGE_BYTES_MAX_DEFAULT, instance_id_for, scan_chunk
from ambrosia.upgrade import logged_code

__all__ = ["SILENT_AFTER_S", "InstanceStatus", "read_status", "render_status"]

SILENT_AFTER_S = 10.0


@dataclass(frozen=True, slots=True)
class InstanceStatus:
    instance: str
    log_url: str
    primary: dict[str, str]
    epoch: int | None
    checkpoint: int | None
    chunks: str
    last_page: dict[str, int] | None
    standbys: list[ReplicaNote]
    board: bool
    read_at: float
    # The catalog's versions (None: not read) and the version the log records (None:
    # none recorded, the registered version wrote it).
    current_version: int | None = None
    upgrade_version: int | None = None
    log_version: int | None = None
    log_app: str | None = None
    checkpointer: CheckpointerStatus | None = None
    # "N replica": the last checkpoint adopted from a checkpointer, and from which.
    adopted: str | None = None

    def upgrade_state(self) -> str | None:
        """What the versions say of an upgrade: None when none is asked."""
        current, wanted = self.current_version, self.upgrade_version
        if current is None or wanted is None or wanted <= current:
            return None
        if self.log_version is not None and self.log_version >= wanted:
            return "committed in the log, catalog not yet updated (the next start records it)"
        return "in progress (or interrupted: then the old version keeps the log)"

    def to_json(self) -> dict[str, Any]:
        now = self.read_at
        last = None if self.last_page is None else self.last_page["sequence"]
        return {
            "instance": self.instance,
            "log": self.log_url,
            "primary": {**self.primary, "epoch": self.epoch},
            "checkpoint": self.checkpoint,
            "chunks": self.chunks,
            "last_page": self.last_page,
            "standbys": [
                {
                    "replica": note.replica_id,
                    "pid": note.pid,
                    "host": note.host,
                    "replayed_page": note.replayed_sequence,
                    "lag_pages": None if last is None else max(0, last - note.replayed_sequence),
                    "lag_s": note.lag_s,
                    "note_age_s": round(now - note.updated, 3),
                    "silent": now - note.updated > SILENT_AFTER_S,
                }
                for note in self.standbys
            ],
            "standbys_reported": self.board,
            "version": {
                "current": self.current_version,
                "upgrade": self.upgrade_version,
                "log": self.log_version,
                "log_app": self.log_app,
                "upgrade_state": self.upgrade_state(),
            },
            "checkpointer": None
            if self.checkpointer is None
            else {
                "replica": self.checkpointer.replica_id,
                "pid": self.checkpointer.pid,
                "host": self.checkpointer.host,
                "replayed_page": self.checkpointer.replayed_sequence,
                "last_candidate": self.checkpointer.candidate,
                "status_age_s": round(now - self.checkpointer.updated, 3),
                "silent": now - self.checkpointer.updated > SILENT_AFTER_S,
            },
            "last_adopted": None if self.adopted is None else self._adopted_json(),
        }

    def _adopted_json(self) -> dict[str, Any]:
        assert self.adopted is not None
        number, _, replica = self.adopted.partition(" ")
        return {"checkpoint": int(number) if number.isdigit() else None, "from": replica}


async def read_status(
    log_url: str,
    instance: str,
    *,
    page_bytes_max: int = PAGE_BYTES_MAX_DEFAULT,
    record: InstanceRecord | None = None,
) -> InstanceStatus:
    """``record``: the instance's catalog record, for its versions (None: not shown)."""
    store = await open_store(log_url, instance)
    try:
        status = await _read(store, log_url, page_bytes_max)
    finally:
        await store.close()
    if record is None:
        return status
    return dataclasses.replace(
        status, current_version=record.current_version, upgrade_version=record.upgrade_version
    )


async def _read(store: LogStore, log_url: str, page_bytes_max: int) -> InstanceStatus:
    policy = DEFAULT_RETRY_POLICY
    meta, _ = await call_with_retry(store.read_meta, policy)
    listed = await call_with_retry(store.list_chunks, policy)
    last_page = None
    for info in reversed(listed):
        if not info.size_bytes:
            continue
        try:
            data = await call_with_retry(functools.partial(store.read_chunk, info.number), policy)
        except NotFoundError:  # deleted by retention under us
            continue
        scan = scan_chunk(
            data,
            where=f"{log_url} {store.instance} chunk {info.number}",
            instance_id=instance_id_for(store.instance),
            page_bytes_max=page_bytes_max,
        )
        if scan.pages:
            page = scan.pages[-1]
            last_page = {
                "sequence": page.sequence,
                "epoch": page.epoch,
                "chunk": info.number,
                "offset": page.offset,
            }
            break
    board = board_of(store)
    notes: list[ReplicaNote] = []
    if board is not None:
        for _, data in await call_with_retry(board.list_replica_notes, policy):
            note = decode_note(data)
            if note is not None:
                notes.append(note)
    checkpointer = None
    area = area_of(store)
    if area is not None:
        with contextlib.suppress(NotFoundError):
            checkpointer = decode_status(
                await call_with_retry(lambda: area.read_candidate(STATUS_NAME), policy)
            )
    adopted = None if meta is None else dict(meta.extra).get("checkpoint.adopted")
    chunks = "none" if meta is None or meta.chunks is None else str(meta.chunks)
    logged = logged_code(meta)
    return InstanceStatus(
        instance=store.instance,
        log_url=log_url,
        primary=current_primary(meta),
        epoch=None if meta is None else meta.epoch,
        checkpoint=None if meta is None else meta.checkpoint,
        chunks=chunks,
        last_page=last_page,
        standbys=notes,
        board=board is not None,
        read_at=time.time(),
        log_version=None if logged is None else logged.version,
        log_app=None if logged is None else logged.app,
        checkpointer=checkpointer,
        adopted=adopted,
    )


def _version_line(status: InstanceStatus) -> str | None:
    if status.current_version is None and status.log_version is None:
        return None
    parts = []
    if status.current_version is not None:
        parts.append(f"{status.current_version} (catalog)")
    if status.log_version is not None:
        parts.append(f"log written by version {status.log_version} ({status.log_app or '?'})")
    line = "version   " + ", ".join(parts)
    state = status.upgrade_state()
    if state is not None:
        line += f"; upgrade to version {status.upgrade_version} {state}"
    return line


def render_status(status: InstanceStatus, *, as_json: bool = False) -> str:
    record = status.to_json()
    if as_json:
        return orjson.dumps(record, option=orjson.OPT_INDENT_2).decode() + "\n"
    primary = record["primary"]
    lines = [f"instance {status.instance}   log {status.log_url}"]
    if status.primary:
        lines.append(
            f"primary   pid {primary.get('pid', '?')} on {primary.get('host', '?')}, "
            f"listening on {primary.get('address', '?')}, epoch {status.epoch}"
        )
    elif status.epoch is None:
        lines.append("primary   none: the log was never started")
    else:
        lines.append(f"primary   epoch {status.epoch} (not recorded by this version's writer)")
    last = status.last_page
    if last is None:
        lines.append(f"log       chunks {status.chunks}, no page yet")
    else:
        lines.append(
            f"log       chunks {status.chunks}, last page {last['sequence']} (epoch "
            f"{last['epoch']}, chunk {last['chunk']} offset {last['offset']})"
        )
    checkpoint = f"checkpoint {status.checkpoint if status.checkpoint is not None else 'none'}"
    adopted = record["last_adopted"]
    if adopted is not None:
        if adopted["checkpoint"] == status.checkpoint:
            checkpoint += f" (adopted from checkpointer {adopted['from']})"
        else:
            checkpoint += f" (last adopted: {adopted['checkpoint']} from {adopted['from']})"
    lines.append(checkpoint)
    version = _version_line(status)
    if version is not None:
        lines.append(version)
    checkpointer = record["checkpointer"]
    if checkpointer is not None:
        silent = (
            f", SILENT for {checkpointer['status_age_s']:.0f} s" if checkpointer["silent"] else ""
        )
        candidate = checkpointer["last_candidate"]
        lines.append(
            f"checkpointer pid {checkpointer['pid']} on {checkpointer['host']}: replayed "
            f"through page {checkpointer['replayed_page']}, last candidate "
            f"{'none yet' if candidate is None else candidate}{silent}"
        )
    if not status.board:
        lines.append("standbys  not reported by this log store")
    elif not record["standbys"]:
        lines.append("standbys  none")
    for standby in record["standbys"]:
        silent = f", SILENT for {standby['note_age_s']:.0f} s" if standby["silent"] else ""
        lag = "?" if standby["lag_pages"] is None else standby["lag_pages"]
        lines.append(
            f"standby   pid {standby['pid']} on {standby['host']}: replayed through page "
            f"{standby['replayed_page']}, {lag} pages and {standby['lag_s']:.1f} s behind"
            f"{silent}"
        )
    return "\n".join(lines) + "\n"
