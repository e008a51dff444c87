"""The benchmark's child processes: started, read line by line with deadlines, always reaped.

Every measured system runs in processes of its own (``python -m <module> <role> ...``),
so the benchmark process only starts them, reads what they print and stops them. Each
child:

- gets this checkout on its ``PYTHONPATH``, so a child runs the same code as the parent
  whether or not the package is installed;
- starts in its own session: a terminal's Ctrl-C reaches the benchmark process only,
  which then stops the child by its handle (never by name);
- is read with a deadline per line (a child that hangs is an error naming it, not a hung
  benchmark), and a child that closes its output early is reported with its exit code
  and the end of its standard error;
- is stopped and reaped whatever happens: killed at once, or first asked to terminate
  when ``graceful_stop_s`` is set, so no zombie or orphan outlives the run.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

__all__ = ["ChildProcess", "child_process"]

reap_timeout_s = 5.0
_stderr_tail_chars = 2000


class ChildProcess:
    """``python -m module *arguments``, its stdout read line by line with deadlines."""

    def __init__(
        self, module: str, arguments: list[str], *, label: str, graceful_stop_s: float = 0.0
    ) -> None:
        package_root = str(Path(__file__).resolve().parents[2])
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [package_root, environment.get("PYTHONPATH")])
        )
        self.label = label
        self.graceful_stop_s = graceful_stop_s
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *arguments],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        self._stdout = self.process.stdout
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._stdout, selectors.EVENT_READ)
        self._buffer = bytearray()

    def name(self) -> str:
        return f"{self.label} process {self.process.pid}"

    def read_line(self, timeout_s: float) -> bytes:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._selector.select(remaining):
                raise RuntimeError(f"{self.name()} said nothing for {timeout_s:.0f} s")
            chunk = os.read(self._stdout.fileno(), 1 << 16)
            if not chunk:
                raise RuntimeError(f"{self.name()} exited early{self.exit_report()}")
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return line

    def read_event(self, timeout_s: float) -> dict[str, Any]:
        """The next line, which must be a JSON object."""
        line = self.read_line(timeout_s)
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise RuntimeError(f"{self.name()} printed {line[:200]!r}") from error
        if not isinstance(event, dict):
            raise RuntimeError(f"{self.name()} printed {line[:200]!r}")
        return event

    def exit_report(self) -> str:
        """`` with exit code N: <end of stderr>``, once the child has exited."""
        try:
            code = self.process.wait(timeout=reap_timeout_s)
        except subprocess.TimeoutExpired:
            return " (closed its output but is still running)"
        assert self.process.stderr is not None
        text = self.process.stderr.read().decode(errors="replace").strip()
        tail = f": {text[-_stderr_tail_chars:]}" if text else ", no output on stderr"
        return f" with exit code {code}{tail}"

    def wait_ok(self, timeout_s: float) -> None:
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired as error:
            raise RuntimeError(f"{self.name()} did not exit within {timeout_s:.0f} s") from error
        if code != 0:
            raise RuntimeError(f"{self.name()} failed{self.exit_report()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            if self.graceful_stop_s > 0:
                self.process.terminate()
                try:
                    self.process.wait(timeout=self.graceful_stop_s)
                except subprocess.TimeoutExpired:
                    self.process.kill()
            else:
                self.process.kill()
        self.process.wait()
        self._selector.close()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def child_process(
    module: str, arguments: list[str], *, label: str, graceful_stop_s: float = 0.0
) -> Iterator[ChildProcess]:
    child = ChildProcess(module, arguments, label=label, graceful_stop_s=graceful_stop_s)
    try:
        yield child
    finally:
        child.stop()
