"""Two in-process immortals on real TCP for the coordinator tests.

``Recorder`` keeps a hash chain of the numbers it receives (forks and awaited calls);
``Sender`` sends 1..total to it, ``per_step`` numbers per logged self-call step, every
``ASYNC_EVERY``-th number as an awaited call whose result it chains too. Started by an
impulse, so a test decides when traffic begins.

"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ambrosia.backends import memory, open_store
from ambrosia.backends.base import LogStore
from ambrosia.binding.dispatcher import in_process
from ambrosia.binding.immortal import Immortal, impulse, rpc
from ambrosia.coordinator.runtime import Config, Runtime
from ambrosia.errors import InstanceNotFoundError
from ambrosia.testing.workloads import chain_step, expected_chain

ASYNC_EVERY = 5
# The coordinator tests' one liveness limit: a wait this long means something is stuck.
# What they wait for (a runtime becoming primary, a few thousand calls, a close) takes
# well under a few seconds here, even on a loaded 2-core machine: at least 10x headroom.
LIVENESS_S = 60.0
_NOT_LISTENING_PORT = 1


class Recorder(Immortal):
    def __init__(self) -> None:
        self.count = 0
        self.chain = ""
        self.out_of_order: list[int] = []

    def _record(self, n: int) -> None:
        if n != self.count + 1:
            self.out_of_order.append(n)
        self.count += 1
        self.chain = chain_step(self.chain, n)

    @rpc
    def record(self, n: int) -> None:
        self._record(n)

    @rpc
    def record_awaited(self, n: int) -> int:
        self._record(n)
        return n * 3

    @rpc
    def answer(self, padding: str) -> str:
        """Answers without recording (for peers played by a test script)."""
        return padding


class Sender(Immortal):
    def __init__(self) -> None:
        self.server = ""
        self.total = 0
        self.per_step = 1
        self.sent = 0
        self.results = 0
        self.result_chain = ""
        self.bad_results: list[int] = []
        self.done = False

    @impulse
    def begin(self, server: str, total: int, per_step: int) -> None:
        self.server = server
        self.total = total
        self.per_step = per_step
        self.this.step.fork()

    @rpc
    async def step(self) -> None:
        recorder = self.proxy(Recorder, self.server)
        for _ in range(self.per_step):
            if self.sent >= self.total:
                break
            self.sent += 1
            n = self.sent
            if n % ASYNC_EVERY == 0:
                value = await recorder.record_awaited(n)
                if value != n * 3:
                    self.bad_results.append(n)
                self.results += 1
                self.result_chain = chain_step(self.result_chain, n)
            else:
                recorder.record.fork(n)
        if self.sent >= self.total:
            self.done = True
        else:
            self.this.step.fork()


class Peers:
    """Runtimes on 127.0.0.1 that find each other by name (ports known once listening).

    Like a catalog: a name that was never registered (started here, or named in
    ``registered`` by a test playing that peer) is ``InstanceNotFoundError``; a
    registered one resolves even while it does not listen.
    """

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}
        self.registered: set[str] = set()

    async def resolve(self, name: str) -> tuple[str, int]:
        if name not in self.registered:
            raise InstanceNotFoundError(name)
        # As a catalog does: a registered name has an address even while nothing listens
        # there (port 1: connections are refused until the runtime is up).
        return "127.0.0.1", self.ports.get(name, _NOT_LISTENING_PORT)

    async def start(
        self, name: str, factory: Callable[[], Immortal], store: LogStore, config: Config
    ) -> Runtime:
        """Start a runtime on a free port and wait until it is primary."""
        self.registered.add(name)
        runtime = Runtime(
            instance=name,
            binding=in_process(factory),
            store=store,
            listen=("127.0.0.1", 0),
            resolve=self.resolve,
            config=config,
        )
        await runtime.start()
        self.ports[name] = runtime.bound_port
        await asyncio.wait_for(runtime.primary.wait(), LIVENESS_S)
        return runtime


class Pair:
    """A Recorder ("server") and a Sender ("client") on 127.0.0.1, memory:// logs."""

    def __init__(self, store_name: str, config: Config | None = None) -> None:
        self.store_name = store_name
        self.config = config or Config(checkpoint_log_bytes=1 << 20)
        self.peers = Peers()
        self.server: Runtime | None = None
        self.client: Runtime | None = None

    async def start_runtime(self, name: str, factory: Callable[[], Immortal]) -> Runtime:
        store = await open_store(f"memory://{self.store_name}", name)
        return await self.peers.start(name, factory, store, self.config)

    async def start(self) -> None:
        self.server = await self.start_runtime("server", Recorder)
        self.client = await self.start_runtime("client", Sender)

    def recorder(self) -> Recorder:
        assert self.server is not None and self.server.dispatcher is not None
        app = self.server.dispatcher.app
        assert isinstance(app, Recorder)
        return app

    def sender(self) -> Sender:
        assert self.client is not None and self.client.dispatcher is not None
        app = self.client.dispatcher.app
        assert isinstance(app, Sender)
        return app

    def begin(self, total: int, per_step: int) -> None:
        self.sender().this.begin.impulse("server", total, per_step)

    def finished(self, total: int) -> bool:
        return self.sender().done and self.recorder().count >= total

    async def wait(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            for runtime in (self.server, self.client):
                if runtime is not None and runtime.failure is not None:
                    raise AssertionError(f"{runtime.instance} failed: {runtime.failure}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.005)

    def check_exactly_once(self, total: int) -> None:
        recorder = self.recorder()
        sender = self.sender()
        assert recorder.out_of_order == []
        assert recorder.count == total
        assert recorder.chain == expected_chain(range(1, total + 1))
        awaited = [n for n in range(1, total + 1) if n % ASYNC_EVERY == 0]
        assert sender.bad_results == []
        assert sender.results == len(awaited)
        assert sender.result_chain == expected_chain(awaited)

    async def stop(self) -> None:
        for runtime in (self.client, self.server):
            if runtime is not None:
                await runtime.stop()


def link_ready(runtime: Runtime | None, destination: str) -> bool:
    if runtime is None:
        return False
    link = runtime.links.get(destination)
    return link is not None and link.protocol is not None and link.protocol.ready


def forget(store_name: str) -> None:
    memory.forget(store_name)
