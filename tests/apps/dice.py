"""A server whose results may not survive replay, and a client that awaits them.

For the tests of output divergence (``tests/coordinator/test_output_divergence.py``).
``Roller`` (instance ``roller``) awaits ``Dice.roll(n)`` for n = 1..``ROLLS_TOTAL``, one
call per logged self-call step, and keeps every result. ``Dice`` (instance ``dice``)
returns ``random.random()``: a result replay cannot regenerate, so after a crash the
state it recovers no longer matches what the roller was given. A process started with
``DICE_DETERMINISTIC=1`` runs a correct ``roll`` instead, which takes its
non-determinism (the time) through the paper's idiom: it forks a self-call carrying
``time.time()``, and its results depend only on the times the log holds. The switch
lives outside the log, as code does.

Both write a status file once primary. Run with this directory on ``PYTHONPATH`` (app
specs ``dice:Dice``, ``dice:Roller``).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from pathlib import Path

from ambrosia import Immortal, rpc

ROLLS_TOTAL = 200
STATUS_INTERVAL_S = 0.05
DETERMINISTIC_VARIABLE = "DICE_DETERMINISTIC"


def _write_status(name: str, status: dict[str, object]) -> None:
    path = Path(os.environ["AMBROSIA_STATUS_DIR"]) / f"{name}.json"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(status))
    os.replace(temporary, path)


class Dice(Immortal):
    def __init__(self) -> None:
        self.rolls = 0
        self.last_tick = 0.0

    @rpc
    def roll(self, n: int) -> float:
        self.rolls += 1
        if os.environ.get(DETERMINISTIC_VARIABLE) != "1":
            return random.random()
        # The idiom: the time enters the log as a self-call's argument; on replay the
        # regenerated call (another time) is dropped and the logged one runs.
        self.this.tick.fork(time.time())
        return self.rolls + self.last_tick

    @rpc
    def tick(self, now: float) -> None:
        self.last_tick = now

    async def on_become_primary(self) -> None:
        self.start_task(self._status_loop())

    async def _status_loop(self) -> None:
        while True:
            _write_status(self.name, {"rolls": self.rolls})
            await asyncio.sleep(STATUS_INTERVAL_S)


class Roller(Immortal):
    def __init__(self) -> None:
        self.results: list[float] = []

    async def on_first_start(self) -> None:
        self.this.step.fork(1)

    @rpc
    async def step(self, n: int) -> None:
        if n > ROLLS_TOTAL:
            return
        value: float = await self.proxy(Dice, "dice").roll(n)
        self.results.append(value)
        self.this.step.fork(n + 1)

    async def on_become_primary(self) -> None:
        self.start_task(self._status_loop())

    async def _status_loop(self) -> None:
        while True:
            _write_status(self.name, {"results": len(self.results)})
            await asyncio.sleep(STATUS_INTERVAL_S)
