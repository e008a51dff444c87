"""Progress of a benchmark run: points done and left, time taken and an estimate of the rest.

A run is a known number of points (a system at a message size, or a system's ping). The
benchmark reports two things:

- ``progress(label, rate)``, as often as it likes, while a point runs (the label names
  the point, such as ``grpc 16 B``; the rate is operations per second so far);
- ``progress.point_done(label, summary)`` once a point finished.

On a terminal, a progress bar (rich) shows the current point and its rate, the points
done of the total, the time taken and the time left, estimated from the points done so
far (the time per point is about the same across sizes: each point runs for the same
warm-up and duration). It is redrawn at most every ``redraw_interval_s`` by the calls
themselves, with no thread of its own, so that reporting costs nothing measurable.
Anywhere else (a pipe, a file, CI) the live updates are silent and each finished point
is one line, such as ``[3/26] ambrosia 1 KiB: 81,234 calls/s, 83.2 MB/s (0:00:12 taken,
about 0:01:32 left)``: logs hold results, not carriage returns. Both go to standard
error; standard output holds the results table.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
from rich.progress import Progress as RichProgress

__all__ = ["Progress", "format_duration"]

redraw_interval_s = 0.1


def format_duration(seconds: float) -> str:
    """``H:MM:SS``, as progress displays write durations."""
    whole = max(0, round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


class Progress:
    """Callable as ``on_progress(label, rate)``; ``point_done`` per point; ``close()``."""

    def __init__(
        self,
        points_total: int,
        stream: TextIO | None = None,
        *,
        enabled: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = self._stream.isatty() if enabled is None else enabled
        self.points_total = points_total
        self.points_done = 0
        self._clock = clock
        self._started = clock()
        self._label = ""
        self._last_drawn = float("-inf")
        self._bar: RichProgress | None = None
        if self.enabled:
            self._bar = RichProgress(
                # Fits 80 columns: the label cut to 26, then 10 + 5 + 7 + 28 or so.
                TextColumn("{task.description:<26.26}"),
                BarColumn(bar_width=10),
                MofNCompleteColumn(),
                TextColumn("points {task.fields[times]}"),
                console=Console(file=self._stream, force_terminal=True),
                auto_refresh=False,
            )
            self._task = self._bar.add_task("starting", total=points_total, times="")
            self._bar.start()

    def remaining_s(self, now: float) -> float | None:
        """Time left, from the mean time of the points done; None before the first."""
        if self.points_done == 0:
            return None
        per_point_s = (now - self._started) / self.points_done
        return per_point_s * max(0, self.points_total - self.points_done)

    def times(self, now: float, *, about: str = "about ") -> str:
        remaining_s = self.remaining_s(now)
        left = "estimating" if remaining_s is None else f"{about}{format_duration(remaining_s)}"
        return f"{format_duration(now - self._started)} taken, {left} left"

    def __call__(self, label: str, rate: float) -> None:
        now = self._clock()
        if label == self._label and now - self._last_drawn < redraw_interval_s:
            return
        self._label = label
        self._last_drawn = now
        self._draw(f"{label}  {rate:,.0f}/s", now)

    def point_done(self, label: str, summary: str) -> None:
        now = self._clock()
        self.points_done += 1
        if self._bar is not None:
            self._bar.update(self._task, completed=self.points_done)
            self._draw(f"{label} done", now)
            return
        print(
            f"[{self.points_done}/{self.points_total}] {label}: {summary} ({self.times(now)})",
            file=self._stream,
            flush=True,
        )

    def _draw(self, description: str, now: float) -> None:
        if self._bar is None:
            return
        self._bar.update(self._task, description=description, times=self.times(now, about=""))
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
