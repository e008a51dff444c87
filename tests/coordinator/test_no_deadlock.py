"""Two immortals flooding each other through tiny buffers still finish: no deadlock.

Each side's dispatcher blocks whenever its output to the other is full, and waits for
the other's acknowledgements. Those depend only on the other side logging its input,
never on it dispatching, so both sides keep making progress (the log is the queue).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from coordinator_peers import Peers

from ambrosia import Immortal, rpc
from ambrosia.backends import open_store
from ambrosia.coordinator.runtime import Config, Runtime

VOLLEY = 300
PAYLOAD = bytes(400)

TINY = Config(
    output_buffer_bytes_max=4 * 1024,
    batch_bytes_max=1024,
    page_bytes_max=16 * 1024,
    delivery_pages_max=1,
)


class Player(Immortal):
    def __init__(self) -> None:
        self.hits = 0
        self.echoes = 0

    def _other(self) -> str:
        return "right" if self.name == "left" else "left"

    async def on_first_start(self) -> None:
        other = self.proxy(Player, self._other())
        for _ in range(VOLLEY):
            other.hit.fork(PAYLOAD)

    @rpc
    def hit(self, payload: bytes) -> None:
        self.hits += 1
        self.proxy(Player, self._other()).echo.fork(payload)

    @rpc
    def echo(self, payload: bytes) -> None:
        self.echoes += 1


async def _play(directory: Path, config: Config, timeout_s: float) -> tuple[Player, Player]:
    peers = Peers()
    runtimes: list[Runtime] = []
    try:
        for name in ("left", "right"):
            store = await open_store(directory.as_uri(), name)
            runtimes.append(await peers.start(name, Player, store, config))
        players = [runtime.dispatcher.app for runtime in runtimes if runtime.dispatcher]
        assert all(isinstance(player, Player) for player in players)
        left, right = players
        assert isinstance(left, Player) and isinstance(right, Player)

        async def finished() -> None:
            while not all(p.hits == VOLLEY and p.echoes == VOLLEY for p in (left, right)):
                for runtime in runtimes:
                    assert runtime.failure is None, runtime.failure
                await asyncio.sleep(0.01)

        await asyncio.wait_for(finished(), timeout_s)
        return left, right
    finally:
        for runtime in runtimes:
            await runtime.stop()


def test_flooding_each_other_through_tiny_buffers_finishes(tmp_path: Path) -> None:
    left, right = asyncio.run(_play(tmp_path, TINY, timeout_s=60))
    assert (left.hits, left.echoes, right.hits, right.echoes) == (VOLLEY,) * 4
