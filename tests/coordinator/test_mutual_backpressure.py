"""Two immortals whose results to each other both pass ``output_buffer_bytes_max`` at once.

Each holds the other's input while its results to the other are over the bound (case 5
of issue 8: a peer that never reads its results must stall only itself). When both are
over at the same time, each waits for the other to read: neither reads. The fix (see
``ambrosia.protocol.outputs``) lets a receiver tell the sender that it holds its input
for that reason, so a peer that is paused but alive is read from, within a hard bound.

Real runtimes on loopback, awaited calls both ways with results far over the bound,
started at the same moment.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from coordinator_peers import Peers

from ambrosia.backends import memory, open_store
from ambrosia.binding.immortal import Immortal, impulse, rpc
from ambrosia.coordinator.runtime import Config, Runtime
from ambrosia.testing.workloads import chain_step, expected_chain

ROUNDS = 20
CALLS = 50
TOTAL = ROUNDS * CALLS
RESULT_BYTES = 4096
DEADLINE_S = 15


class Mutual(Immortal):
    """Sends ``calls`` awaited calls to ``peer`` at once, then awaits them in order."""

    def __init__(self) -> None:
        self.answered = 0
        self.received = 0
        self.chain = ""
        self.done = False

    @impulse
    def begin(self, peer: str, rounds: int, calls: int) -> None:
        self.this.run.fork(peer, rounds, calls)

    @rpc
    async def run(self, peer: str, rounds: int, calls: int) -> None:
        other = self.proxy(Mutual, peer)
        n = 0
        for _ in range(rounds):
            pending = [other.answer(n + k) for k in range(1, calls + 1)]
            for call in pending:
                n += 1
                if await call == "r" * RESULT_BYTES:
                    self.received += 1
                    self.chain = chain_step(self.chain, n)
        self.done = True

    @rpc
    def answer(self, n: int) -> str:
        self.answered += 1
        return "r" * RESULT_BYTES


def app(runtime: Runtime) -> Mutual:
    assert runtime.dispatcher is not None
    found = runtime.dispatcher.app
    assert isinstance(found, Mutual)
    return found


def test_two_peers_over_their_result_bound_toward_each_other_make_progress() -> None:
    config = Config(checkpoint_log_bytes=1 << 20, output_buffer_bytes_max=16 * 1024)

    async def scenario() -> None:
        name = f"mutual-{uuid.uuid4().hex}"
        peers = Peers()
        runtimes: list[Runtime] = []
        try:
            for instance in ("left", "right"):
                store = await open_store(f"memory://{name}", instance)
                runtimes.append(await peers.start(instance, Mutual, store, config))
            left, right = runtimes
            # Both begin in the same loop turn: their calls cross, and so do the results.
            app(left).this.begin.impulse("right", ROUNDS, CALLS)
            app(right).this.begin.impulse("left", ROUNDS, CALLS)
            deadline = time.monotonic() + DEADLINE_S
            while not (app(left).done and app(right).done):
                for runtime in runtimes:
                    assert runtime.failure is None, runtime.failure
                if time.monotonic() > deadline:
                    held = {
                        runtime.instance: [
                            source for source, link in runtime.incoming.items() if link.held
                        ]
                        for runtime in runtimes
                    }
                    raise AssertionError(
                        f"no progress: answered {app(left).answered}/{app(right).answered}, "
                        f"received {app(left).received}/{app(right).received}, "
                        f"input held: {held}"
                    )
                await asyncio.sleep(0.01)
            for runtime in runtimes:
                assert app(runtime).answered == TOTAL
                assert app(runtime).received == TOTAL
                assert app(runtime).chain == expected_chain(range(1, TOTAL + 1))
        finally:
            for runtime in runtimes:
                await runtime.stop()
            memory.forget(name)

    asyncio.run(asyncio.wait_for(scenario(), DEADLINE_S + 20))
