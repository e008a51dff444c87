"""Workloads and exactly-once checkers for crash tests (public, like trio.testing).

``ChainServer`` records numbered calls into a hash chain; ``ChainClient`` sends calls
1..N to it, a mix of forks and awaited calls, one step per logged self-call. Both write
a status file (outside their logged state) so a harness can watch progress and check
the outcome: the server saw exactly 1..N in order (the chain, not only the count, must
match), and the client received every awaited result exactly once (its own chain).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

from ambrosia.binding.immortal import Immortal, rpc

STATUS_INTERVAL_S = 0.05
ASYNC_EVERY = 3


def chain_step(chain: str, value: int) -> str:
    return hashlib.sha256(f"{chain}:{value}".encode()).hexdigest()


def expected_chain(values: range | list[int]) -> str:
    chain = ""
    for value in values:
        chain = chain_step(chain, value)
    return chain


def is_async_call(n: int) -> bool:
    return n % ASYNC_EVERY == 0


def _write_status(path: Path, status: dict[str, object]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(status))
    os.replace(temporary, path)


class ChainServer(Immortal):
    def __init__(self) -> None:
        self.count = 0
        self.chain = ""
        self.out_of_order: list[int] = []

    def _record(self, n: int) -> int:
        if n != self.count + 1:
            self.out_of_order.append(n)
        self.count += 1
        self.chain = chain_step(self.chain, n)
        return n * 2

    @rpc
    def record(self, n: int) -> int:
        return self._record(n)

    @rpc
    def record_fork(self, n: int) -> None:
        self._record(n)

    async def on_become_primary(self) -> None:
        self.start_task(self._status_loop())

    async def _status_loop(self) -> None:
        path = Path(os.environ["AMBROSIA_STATUS_DIR"]) / f"{self.name}.json"
        while True:
            _write_status(
                path,
                {"count": self.count, "chain": self.chain, "out_of_order": self.out_of_order[:10]},
            )
            await asyncio.sleep(STATUS_INTERVAL_S)


class ChainClient(Immortal):
    def __init__(self) -> None:
        self.total = 0
        self.sent = 0
        self.results = 0
        self.result_chain = ""
        self.bad_results: list[int] = []
        self.done = False

    async def on_first_start(self) -> None:
        self.total = int(os.environ.get("AMBROSIA_CHAIN_TOTAL", "1000"))
        self.this.step.fork(1)

    @rpc
    async def step(self, n: int) -> None:
        server = self.proxy(ChainServer, "server")
        if n > self.total:
            self.done = True
            return
        self.sent = n
        if is_async_call(n):
            value = await server.record(n)
            if value != n * 2:
                self.bad_results.append(n)
            self.results += 1
            self.result_chain = chain_step(self.result_chain, n)
        else:
            server.record_fork.fork(n)
        self.this.step.fork(n + 1)

    async def on_become_primary(self) -> None:
        self.start_task(self._status_loop())

    async def _status_loop(self) -> None:
        path = Path(os.environ["AMBROSIA_STATUS_DIR"]) / f"{self.name}.json"
        while True:
            _write_status(
                path,
                {
                    "sent": self.sent,
                    "results": self.results,
                    "result_chain": self.result_chain,
                    "done": self.done,
                    "total": self.total,
                    "bad_results": self.bad_results[:10],
                },
            )
            await asyncio.sleep(STATUS_INTERVAL_S)
