import io

from ambrosia.bench.progress import Progress


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_disabled_stream_stays_silent() -> None:
    stream = io.StringIO()  # not a terminal
    progress = Progress(stream)
    assert not progress.enabled
    progress("grpc 16 B", 1000.0)
    progress.close()
    assert stream.getvalue() == ""


def test_terminal_line_is_rewritten_and_throttled() -> None:
    stream = io.StringIO()
    clock = _Clock()
    progress = Progress(stream, enabled=True, clock=clock)
    clock.now = 1.0
    progress("grpc 16 B", 50_000.0)
    first = stream.getvalue()
    assert first.startswith("\r") and "grpc 16 B" in first and "50,000/s" in first
    clock.now = 1.05  # within the redraw interval: nothing new
    progress("grpc 16 B", 60_000.0)
    assert stream.getvalue() == first
    clock.now = 2.5
    progress("grpc 16 B", 70_000.0)
    assert "point   1.5 s" in stream.getvalue() and "total    2.5 s" in stream.getvalue()
    clock.now = 2.55  # a new point redraws at once and restarts the point clock
    progress("grpc 32 B", 1.0)
    assert "grpc 32 B" in stream.getvalue() and "point   0.0 s" in stream.getvalue()
    assert "\n" not in stream.getvalue()
    progress.close()
    assert stream.getvalue().endswith("\r")
