"""The paper's section 3.2: a forwarder that reports elapsed time, deterministically.

Three immortals, each in its own process:

- ``Source`` sends ``message 1`` .. ``message N`` to the forwarder, a batch per tick of
  a timer. The ticks are impulses from a background task started when the source
  becomes primary: the pace is outside input, the batches are logged calls.
- ``Forwarder`` forwards every message to the sink and, every 1000 messages, reports
  the time elapsed since the first one.
- ``Sink`` counts the messages (checking their order) and records the reports.

The clock, the self-call idiom
------------------------------
Reading the clock in a handler is non-deterministic: replaying the log after a crash
would read a different time. The paper's answer (``continueProcess``) is to read the
clock and pass the value to yourself in a call::

    self.this.continue_process.fork(time.time())

The self-call is logged like any input before it runs. The first time it is logged,
its value is fixed for good: on replay, the handler that read the clock runs again and
reads another time, but the call it forks is recognised as one already logged (self
calls are numbered like any other output) and dropped, and the logged one, with the
original time, is what ``continue_process`` receives. So the start time and each
report's time enter the state only through the log, and replaying the forwarder's log
reproduces exactly the reports it sent (``tests/examples/test_forwarder.py`` checks
that with ``ambrosia.testing.replay``).

One change from the paper's code: messages that arrive between the clock being read
and the self-call carrying it being dispatched wait in ``waiting`` instead of forking
their own self-calls, so the forwarding order is always the arrival order (with one
self-call per message, a message arriving after the start time was set could overtake
earlier messages still queued as self-calls).

Instance names are fixed: ``source``, ``forwarder``, ``sink``. ``FORWARDER_MESSAGES``
(default 5000) is read once, on the source's first start, and logged through a
self-call like the clock; ``FORWARDER_TICK_S`` (default 0.01) paces the ticks.
"""

from __future__ import annotations

import asyncio
import os
import time

from ambrosia import Immortal, impulse, rpc

SOURCE = "source"
FORWARDER = "forwarder"
SINK = "sink"
REPORT_EVERY = 1000
BATCH_MESSAGES = 100


class Sink(Immortal):
    """Receives the forwarded messages and the reports."""

    def __init__(self) -> None:
        self.received = 0
        self.out_of_order: list[str] = []
        self.reports: list[tuple[int, float]] = []

    @rpc
    def send(self, message: str) -> None:
        self.received += 1
        if message != f"message {self.received}" and len(self.out_of_order) < 10:
            self.out_of_order.append(message)

    @rpc
    def report(self, number: int, elapsed_s: float) -> None:
        self.reports.append((number, elapsed_s))
        if not self.replaying:
            print(
                f"report {number}: {number * REPORT_EVERY} messages in {elapsed_s:.6f} s",
                flush=True,
            )


class Forwarder(Immortal):
    """Forwards messages to the sink; reports elapsed time every 1000 messages."""

    def __init__(self) -> None:
        self.start_time: float | None = None
        self.count = 0
        self.waiting: list[str] = []
        self.reports: list[float] = []

    @rpc
    def process(self, message: str) -> None:
        if self.start_time is None:
            if not self.waiting:
                # Read here, used only once logged: see the module docstring.
                self.this.continue_process.fork(time.time())
            self.waiting.append(message)
            return
        self._finish(message)

    @rpc
    def continue_process(self, start_time: float) -> None:
        self.start_time = start_time
        waiting, self.waiting = self.waiting, []
        for message in waiting:
            self._finish(message)

    def _finish(self, message: str) -> None:
        self.count += 1
        if self.count % REPORT_EVERY == 0:
            self.this.report.fork(self.count // REPORT_EVERY, time.time())
        self.proxy(Sink, SINK).send.fork(message)

    @rpc
    def report(self, number: int, now: float) -> None:
        assert self.start_time is not None, "reports follow the first message"
        elapsed_s = now - self.start_time
        self.reports.append(elapsed_s)
        self.proxy(Sink, SINK).report.fork(number, elapsed_s)


class Source(Immortal):
    """Sends ``message 1`` .. ``message N`` to the forwarder, a batch per timer tick."""

    def __init__(self) -> None:
        self.total = 0
        self.sent = 0

    async def on_first_start(self) -> None:
        # The environment is outside input too: log its value through a self-call.
        self.this.start.fork(int(os.environ.get("FORWARDER_MESSAGES", "5000")))

    @rpc
    def start(self, total: int) -> None:
        self.total = total

    @impulse
    def tick(self) -> None:
        forwarder = self.proxy(Forwarder, FORWARDER)
        end = min(self.sent + BATCH_MESSAGES, self.total)
        for number in range(self.sent + 1, end + 1):
            forwarder.process.fork(f"message {number}")
        self.sent = end

    async def on_become_primary(self) -> None:
        self.start_task(self._ticker(float(os.environ.get("FORWARDER_TICK_S", "0.01"))))

    async def _ticker(self, interval_s: float) -> None:
        # Reading state outside a handler is fine; changing it is only done by handlers.
        while self.total == 0 or self.sent < self.total:
            await asyncio.sleep(interval_s)
            self.this.tick.impulse()
