"""Benchmark progress: a rich bar on a terminal, one line per finished point elsewhere."""

import io
import re

from ambrosia.bench.progress import Progress, format_duration


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_not_a_terminal_one_line_per_finished_point_with_time_left() -> None:
    stream = io.StringIO()  # not a terminal
    clock = _Clock()
    progress = Progress(4, stream, clock=clock)
    assert not progress.enabled
    progress("grpc 16 B", 1000.0)  # live updates stay out of logs
    assert stream.getvalue() == ""
    clock.now = 10.0
    progress.point_done("grpc 16 B", "1,000 calls/s")
    clock.now = 20.0
    progress.point_done("ambrosia 16 B", "2,000 calls/s")
    progress.close()
    assert stream.getvalue().splitlines() == [
        "[1/4] grpc 16 B: 1,000 calls/s (0:00:10 taken, about 0:00:30 left)",
        "[2/4] ambrosia 16 B: 2,000 calls/s (0:00:20 taken, about 0:00:20 left)",
    ]
    assert "\r" not in stream.getvalue()


def test_terminal_bar_shows_points_done_of_total_and_time_left() -> None:
    stream = io.StringIO()
    clock = _Clock()
    progress = Progress(3, stream, enabled=True, clock=clock)
    clock.now = 1.0
    progress("grpc 1 KiB", 50_000.0)
    assert "grpc 1 KiB" in stream.getvalue() and "50,000/s" in stream.getvalue()
    assert "0/3" in stream.getvalue() and "estimating" in stream.getvalue()
    drawn = stream.getvalue()
    clock.now = 1.05  # within the redraw interval: nothing new
    progress("grpc 1 KiB", 60_000.0)
    assert stream.getvalue() == drawn
    clock.now = 30.0
    progress.point_done("grpc 1 KiB", "50,000 calls/s")
    text = stream.getvalue()
    assert "1/3" in text and "0:00:30 taken, 0:01:00 left" in text
    progress.close()
    assert "[1/3]" not in stream.getvalue()  # the bar, not log lines
    # Nothing was cut short to fit 80 columns but the label.
    assert "…" not in text.split("grpc 1 KiB")[-1]


def test_durations_read_as_hours_minutes_seconds() -> None:
    assert [format_duration(s) for s in (0, 59.6, 61, 3725)] == [
        "0:00:00",
        "0:01:00",
        "0:01:01",
        "1:02:05",
    ]
    assert re.fullmatch(r"\d+:\d\d:\d\d", format_duration(86_400 * 2))
