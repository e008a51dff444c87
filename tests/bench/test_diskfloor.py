"""The disk floor: synchronous page writes alone, rotated like log chunks, cleaned up."""

from __future__ import annotations

from pathlib import Path

import pytest

from ambrosia.bench import diskfloor, report


def test_disk_rows_count_durable_bytes_and_leave_nothing_behind(tmp_path: Path) -> None:
    progress: list[tuple[str, float]] = []
    points = diskfloor.run_throughput(
        [16, 65536],
        duration_s=0.3,
        warmup_s=0.05,
        directory=tmp_path,
        on_progress=lambda label, rate: progress.append((label, rate)),
        page_bytes=64 * 1024,
        chunk_bytes=256 * 1024,  # several files per point: rotation exercised
    )
    assert [(p.system, p.size_bytes) for p in points] == [("disk", 16), ("disk", 65536)]
    for point in points:
        assert point.messages > 0 and point.seconds >= 0.3
        assert point.megabytes_per_second == pytest.approx(
            point.messages * point.size_bytes / point.seconds / report.megabyte_bytes
        )
        assert point.peak_rss_bytes is None
    assert list(tmp_path.iterdir()) == []
    assert all(label.startswith("disk ") and rate > 0 for label, rate in progress)


def test_a_page_larger_than_a_chunk_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nothing to write"):
        diskfloor.run_throughput(
            [16],
            duration_s=0.1,
            warmup_s=0,
            directory=tmp_path,
            on_progress=lambda label, rate: None,
            page_bytes=1 << 20,
            chunk_bytes=1 << 10,
        )
