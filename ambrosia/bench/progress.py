"""Live progress: one line rewritten in place on a terminal, nothing anywhere else.

Benchmarks call ``progress(label, rate)`` as often as they like (the label names the
point, such as ``grpc 16 B``; the rate is operations per second so far). On a terminal
the line shows the point, how long this point and the whole run have taken, and the
rate; it is redrawn at most every ``redraw_interval_s`` so that reporting costs nothing
measurable. When the stream is not a terminal (a pipe, a file, CI), progress is silent:
logs should hold results, not carriage returns.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress"]

redraw_interval_s = 0.1


class Progress:
    """Callable as ``on_progress(label, rate)``; ``close()`` ends the line."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        enabled: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self.enabled = self._stream.isatty() if enabled is None else enabled
        self._clock = clock
        self._started = clock()
        self._label = ""
        self._label_started = self._started
        self._last_drawn = float("-inf")
        self._width = 0

    def __call__(self, label: str, rate: float) -> None:
        now = self._clock()
        if label != self._label:
            self._label = label
            self._label_started = now
        elif now - self._last_drawn < redraw_interval_s:
            return
        if self.enabled:
            self._draw(self.line(now, rate))
        self._last_drawn = now

    def line(self, now: float, rate: float) -> str:
        return (
            f"{self._label:<28} point {now - self._label_started:5.1f} s"
            f"  total {now - self._started:6.1f} s  {rate:>14,.0f}/s"
        )

    def _draw(self, text: str) -> None:
        # Pad with spaces so a shorter line fully covers the longer one before it.
        padding = max(0, self._width - len(text))
        self._stream.write("\r" + text + " " * padding)
        self._stream.flush()
        self._width = len(text)

    def close(self) -> None:
        if self.enabled and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0
