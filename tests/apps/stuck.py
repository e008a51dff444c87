"""A server with a handler that never returns, and a feeder that calls it.

For the tests of stopping and of the stuck-handler watchdog (``tests/coordinator/
test_watchdog.py``). ``Feeder`` (instance ``feeder``) sends, from ``on_first_start`` and
so in one batch, ``record(1..RECORDS_BEFORE)``, then ``stuck(how)``, then the rest of
``record(..RECORDS_TOTAL)`` to ``Stuck`` (instance ``server``). ``Stuck.stuck`` never
returns: ``how="spin"`` loops on the CPU, ``how="sleep"`` sleeps for days. A process
started with ``STUCK_FIXED=1`` runs a fixed ``stuck`` that returns at once: it models
deploying a corrected handler and restarting, which is why the switch lives outside the
log (it is new code, not an input). ``Stuck`` writes its state to a status file once it is
primary, so a test sees what ran, and touches ``server.stuck`` beside it when it gets stuck.

Run it with this directory on ``PYTHONPATH`` (app specs ``stuck:Stuck``, ``stuck:Feeder``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from ambrosia import Immortal, rpc

RECORDS_BEFORE = 3
RECORDS_TOTAL = 7
STATUS_INTERVAL_S = 0.05
FIXED_VARIABLE = "STUCK_FIXED"
HOW_VARIABLE = "STUCK_HOW"


class Stuck(Immortal):
    def __init__(self) -> None:
        self.numbers: list[int] = []

    @rpc
    def record(self, n: int) -> None:
        self.numbers.append(n)

    @rpc
    def stuck(self, how: str) -> None:
        if os.environ.get(FIXED_VARIABLE) == "1":
            return
        # A sign for the test, outside the log, that doesn't depend on the watchdog.
        (Path(os.environ["AMBROSIA_STATUS_DIR"]) / f"{self.name}.stuck").touch()
        if how == "sleep":
            time.sleep(10**6)
        while True:
            pass

    async def on_become_primary(self) -> None:
        self.start_task(self._status_loop())

    async def _status_loop(self) -> None:
        path = Path(os.environ["AMBROSIA_STATUS_DIR"]) / f"{self.name}.json"
        temporary = path.with_suffix(".tmp")
        while True:
            temporary.write_text(json.dumps({"numbers": self.numbers}))
            os.replace(temporary, path)
            await asyncio.sleep(STATUS_INTERVAL_S)


class Feeder(Immortal):
    async def on_first_start(self) -> None:
        server = self.proxy(Stuck, "server")
        for n in range(1, RECORDS_BEFORE + 1):
            server.record.fork(n)
        # Read once, in the first call, and then logged as the argument: the test chooses.
        server.stuck.fork(os.environ.get(HOW_VARIABLE, "spin"))
        for n in range(RECORDS_BEFORE + 1, RECORDS_TOTAL + 1):
            server.record.fork(n)
