"""Replay that no longer matches the log is detected and stops the immortal."""

from __future__ import annotations

import asyncio

from coordinator_peers import LIVENESS_S

from ambrosia import Immortal, rpc
from ambrosia.backends import open_store
from ambrosia.binding.dispatcher import in_process
from ambrosia.coordinator.runtime import Runtime
from ambrosia.errors import ReplayDivergenceError


class Stepper(Immortal):
    """Each step forks a self-call; which method it calls depends on a class switch."""

    use_other_method = False

    def __init__(self) -> None:
        self.steps = 0

    async def on_first_start(self) -> None:
        self.this.step.fork(1)

    @rpc
    def step(self, n: int) -> None:
        self.steps = n
        if n < 5:
            if Stepper.use_other_method:
                self.this.other.fork(n + 1)
            else:
                self.this.step.fork(n + 1)

    @rpc
    def other(self, n: int) -> None:
        self.steps = -n


async def _run(url: str, until_steps: int | None) -> Runtime:
    store = await open_store(url, "stepper")

    async def resolve(name: str) -> tuple[str, int]:
        raise AssertionError(f"no peers here, asked for {name}")

    runtime = Runtime(
        instance="stepper",
        binding=in_process(Stepper),
        store=store,
        listen=("127.0.0.1", 0),
        resolve=resolve,
    )
    await runtime.start()
    if until_steps is not None:
        for _ in range(500):
            await asyncio.sleep(0.01)
            app = runtime.dispatcher.app if runtime.dispatcher else None
            if isinstance(app, Stepper) and app.steps >= until_steps:
                break
    return runtime


def test_replay_that_calls_a_different_method_is_reported() -> None:
    async def main() -> None:
        url = "memory://divergence-test"
        first = await _run(url, until_steps=5)
        assert first.failure is None
        # Stop without a final checkpoint being the only state: the self-calls stay in
        # the log after the recovery checkpoint, so the next start replays them.
        await first.stop()
        Stepper.use_other_method = True
        try:
            second = await _run(url, until_steps=None)
            await asyncio.wait_for(second.stopped.wait(), LIVENESS_S)
            assert isinstance(second.failure, ReplayDivergenceError), second.failure
            assert "diverged at self-call" in str(second.failure)
            await second.stop()
        finally:
            Stepper.use_other_method = False

    asyncio.run(main())


def test_replay_of_the_same_code_recovers_the_same_state() -> None:
    async def main() -> None:
        url = "memory://divergence-control"
        first = await _run(url, until_steps=5)
        await first.stop()
        second = await _run(url, until_steps=5)
        assert second.failure is None
        assert isinstance(second.dispatcher.app if second.dispatcher else None, Stepper)
        assert second.dispatcher is not None
        assert second.dispatcher.app.steps == 5  # type: ignore[attr-defined]
        await second.stop()

    asyncio.run(main())


def test_streams_record_replay_places_only_during_replay() -> None:
    """Where replay made each message is noted by wrapping the streams' ``add`` during
    replay; once primary, no stream (old or opened later) may keep paying for it."""

    async def main() -> None:
        url = "memory://divergence-places"
        first = await _run(url, until_steps=5)
        await first.stop()
        second = await _run(url, until_steps=5)
        await asyncio.wait_for(second.primary.wait(), LIVENESS_S)
        later = second.open_stream("a-peer-met-later")
        for stream in [*second.streams.values(), later]:
            assert "add" not in vars(stream) and "add_run" not in vars(stream), stream.destination
        await second.stop()

    asyncio.run(main())
