"""Two coordinators in one event loop over real TCP: connections dropped again and again,
every call still arrives exactly once, in order, and every awaited result comes back."""

from __future__ import annotations

import asyncio
import uuid

from coordinator_peers import LIVENESS_S, Pair, forget

# No progress for this long while connections drop fails the run early: reconnecting
# waits at most 1.5 x reconnect_delay_max_s (0.25 s), far below this.
STALL_S = 20.0


class Progress:
    """Fails a run that makes no progress for STALL_S (instead of waiting for a timeout)."""

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.last = (-1, -1)
        self.since = 0.0

    def check(self) -> None:
        loop = asyncio.get_running_loop()
        now = (self.pair.recorder().count, self.pair.sender().results)
        if now != self.last:
            self.last = now
            self.since = loop.time()
        assert loop.time() - self.since < STALL_S, f"no progress for {STALL_S} s at {now}"


def run(coroutine_function: object) -> None:
    assert callable(coroutine_function)
    asyncio.run(asyncio.wait_for(coroutine_function(), 2 * LIVENESS_S))


def drop_all(pair: Pair, *, abort: bool) -> int:
    """Close every TCP connection between the two runtimes, from either side."""
    dropped = 0
    for runtime in (pair.server, pair.client):
        assert runtime is not None
        for link in runtime.links.values():
            connection = link.protocol
            if connection is not None and not connection.closed:
                dropped += 1
                connection.close(abort=abort)
        for incoming in runtime.incoming.values():
            transport = incoming.transport
            if transport is not None and not transport.is_closing():
                dropped += 1
                transport.abort() if abort else transport.close()
    return dropped


def test_calls_arrive_once_in_order_without_failures() -> None:
    async def scenario() -> None:
        name = f"links-{uuid.uuid4().hex}"
        pair = Pair(name)
        try:
            await pair.start()
            pair.begin(total=600, per_step=20)
            await pair.wait(lambda: pair.finished(600), LIVENESS_S, "all calls")
            pair.check_exactly_once(600)
        finally:
            await pair.stop()
            forget(name)

    run(scenario)


def test_first_calls_flow_without_any_reconnection() -> None:
    # Regression: the receiver's ReplayFrom can be read before the dialling task resumes;
    # the flush it triggers must find the new connection, or the stream stays stuck.
    async def scenario() -> None:
        name = f"links-{uuid.uuid4().hex}"
        pair = Pair(name)
        try:
            await pair.start()
            pair.begin(total=50, per_step=10)  # the first call opens the link
            await pair.wait(lambda: pair.finished(50), LIVENESS_S, "all calls")
            pair.check_exactly_once(50)
        finally:
            await pair.stop()
            forget(name)

    run(scenario)


def test_dropped_connections_lose_and_repeat_nothing() -> None:
    total = 2000

    async def scenario() -> None:
        name = f"links-{uuid.uuid4().hex}"
        pair = Pair(name)
        try:
            await pair.start()
            pair.begin(total=total, per_step=25)
            drops = 0
            rounds = 0
            progress = Progress(pair)
            while not pair.finished(total):
                await asyncio.sleep(0.01)
                rounds += 1
                drops += drop_all(pair, abort=rounds % 2 == 0)
                progress.check()
            assert drops >= 6, f"only {drops} connections were dropped during the run"
            assert pair.recorder().count == total
            pair.check_exactly_once(total)
            for runtime in (pair.server, pair.client):
                assert runtime is not None and runtime.failure is None
        finally:
            await pair.stop()
            forget(name)

    run(scenario)


def test_drop_while_awaited_call_is_in_flight() -> None:
    # per_step=1 makes every step wait for its call; drops land between call and result.
    total = 200

    async def scenario() -> None:
        name = f"links-{uuid.uuid4().hex}"
        pair = Pair(name)
        try:
            await pair.start()
            pair.begin(total=total, per_step=1)
            drops = 0
            last_results = -1
            progress = Progress(pair)
            while not pair.finished(total):
                results = pair.sender().results
                if results != last_results:  # the next call is on its way
                    last_results = results
                    drops += drop_all(pair, abort=True)
                await asyncio.sleep(0.002)
                progress.check()
            assert drops >= 10
            pair.check_exactly_once(total)
        finally:
            await pair.stop()
            forget(name)

    run(scenario)
