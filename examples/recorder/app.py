"""The paper's section 4.1: a recorder of standard input, fed through an impulse.

Lines typed on standard input are outside input that nobody can type again after a
crash: they cannot be replayed from their source, only from the log. So they enter the
immortal through an ``@impulse`` method: each line is logged before ``accept_input``
runs, and after a crash the recorder gets its lines back by replaying its log, not by
reading them again.

The input pump (a daemon thread reading lines, handing them to the event loop) is
started in ``on_become_primary``, that is after recovery: during replay there is no
pump, and an impulse sent during recovery would be refused anyway
(``ImpulseDuringRecoveryError``), because its place in the log could not be known
until the log has been replayed. A line read but not yet logged when the process dies
is lost (impulses are at most once until logged); a logged line is never lost.

A thread, not ``loop.connect_read_pipe``, because standard input may be a pipe, a
terminal or a regular file, and only a thread reads all three; it is a daemon thread so
that a blocked ``readline`` never keeps a stopping process alive. End of input ends the
pump; the recorder keeps running (an immortal does not end).

After each line, the recorder prints the whole list; after recovery it prints the
lines it recovered. Printing is skipped while replaying, so a restarted recorder does
not print its history once per replayed line.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import TextIO

from ambrosia import Immortal, impulse


class Recorder(Immortal):
    def __init__(self) -> None:
        self.lines: list[str] = []

    @impulse
    def accept_input(self, line: str) -> None:
        self.lines.append(line)
        if not self.replaying:
            self._print_lines("recorded input:")

    async def on_become_primary(self) -> None:
        self._print_lines(f"recovered {len(self.lines)} line(s):")
        self.start_task(self._pump(sys.stdin))

    def _print_lines(self, title: str) -> None:
        print(title, flush=True)
        for line in self.lines:
            print(f"  {line}", flush=True)

    async def _pump(self, stream: TextIO) -> None:
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str | None] = asyncio.Queue()

        def hand_over(line: str | None) -> bool:
            try:
                loop.call_soon_threadsafe(lines.put_nowait, line)
            except RuntimeError:  # the loop is closed: the process is stopping
                return False
            return True

        def read() -> None:
            for line in stream:
                if not hand_over(line.rstrip("\n")):
                    return
            hand_over(None)

        threading.Thread(target=read, name="recorder-stdin", daemon=True).start()
        while (line := await lines.get()) is not None:
            self.this.accept_input.impulse(line)
