"""The machine's floor for durable throughput: how fast this disk takes synchronous writes.

Every ambrosia page is durable before the server runs its calls: the embedded file log
writes each page with one ``O_DSYNC`` write. No log on this disk can make more bytes
durable per second than the disk itself takes them that way, so ``ambrosia-bench
throughput --systems ambrosia,grpc,disk`` measures, at each size, the ``disk`` row: the
same kind of writes, with nothing else (no framework, no network, no checksum).

What it writes: pages of ``PAGE_BYTES_MAX_DEFAULT`` (8 MiB, the size the log's pages
reach when streaming large messages) of incompressible bytes, each one ``os.write`` to a
file opened with ``O_DSYNC``, appended as the log appends to its chunk files, in a
scratch folder of the point's work directory (the file system the default log uses).
A file is replaced by a fresh one after ``chunk_bytes`` (the log's chunk size), so the
run never holds more than that on disk and, like the log, keeps allocating new blocks.

The row's ``messages`` is the number of ``size``-byte messages those bytes would carry
(framing ignored), so it reads like the other rows at that size; its MB/s is the figure
that matters: the ceiling of any durable streaming rate at any size on this disk.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from ambrosia.bench.report import ThroughputPoint, throughput_point
from ambrosia.bench.sizes import format_size
from ambrosia.log.page import PAGE_BYTES_MAX_DEFAULT

__all__ = ["SYSTEM", "run_throughput"]

SYSTEM = "disk"
CHUNK_BYTES_DEFAULT = 256 * 1024 * 1024  # the log's chunk size (checkpoint_log_bytes)
_PROGRESS_INTERVAL_S = 0.2


class _Writer:
    """Appends pages with O_DSYNC, starting a fresh file every ``chunk_bytes``."""

    def __init__(self, directory: Path, page: bytes, chunk_bytes: int) -> None:
        self.directory = directory
        self.page = page
        self.chunk_bytes = chunk_bytes
        self.number = 0
        self.fd = -1
        self.offset = 0
        self._open()

    def _open(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            os.unlink(self.directory / f"chunk-{self.number}")
            self.number += 1
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DSYNC | os.O_CLOEXEC
        self.fd = os.open(self.directory / f"chunk-{self.number}", flags, 0o600)
        self.offset = 0

    def write_page(self) -> int:
        if self.offset + len(self.page) > self.chunk_bytes:
            self._open()
        with memoryview(self.page) as view:
            written = 0
            while written < len(view):
                written += os.write(self.fd, view[written:])
        self.offset += written
        return written

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def run_throughput(
    sizes: list[int],
    *,
    duration_s: float,
    warmup_s: float,
    directory: Path,
    on_progress: Callable[[str, float], None],
    page_bytes: int = PAGE_BYTES_MAX_DEFAULT,
    chunk_bytes: int = CHUNK_BYTES_DEFAULT,
) -> list[ThroughputPoint]:
    """One ``disk`` row per size: synchronous page writes for ``duration_s`` after warm-up."""
    if page_bytes <= 0 or chunk_bytes < page_bytes:
        raise ValueError(f"page of {page_bytes} bytes, chunk of {chunk_bytes}: nothing to write")
    page = os.urandom(page_bytes)
    points = []
    for size in sizes:
        scratch = directory / f"disk-{size}"
        scratch.mkdir(parents=True, exist_ok=True)
        writer = _Writer(scratch, page, chunk_bytes)
        try:
            started = time.perf_counter()
            while time.perf_counter() - started < warmup_s:
                writer.write_page()
            written = 0
            started = reported = time.perf_counter()
            while (now := time.perf_counter()) - started < duration_s or written == 0:
                written += writer.write_page()
                if now - reported >= _PROGRESS_INTERVAL_S:
                    reported = now
                    on_progress(f"disk {format_size(size)}", written / size / (now - started))
            elapsed = time.perf_counter() - started
        finally:
            writer.close()
            shutil.rmtree(scratch, ignore_errors=True)
        points.append(throughput_point(SYSTEM, size, written // size, elapsed))
    return points
