"""Workloads and exactly-once checkers for crash tests (public, like trio.testing).

``ChainServer`` records numbered calls into a hash chain; ``ChainClient`` sends calls
1..N to it, a mix of forks and awaited calls, one step per logged self-call. Both write
a status file (outside their logged state) so a harness can watch progress and check
the outcome: the server saw exactly 1..N in order (the chain, not only the count, must
match), and the client received every awaited result exactly once (its own chain).

Longer chains put ``ChainRelay`` immortals between the two (``AMBROSIA_CHAIN_RELAYS``
of them, named ``relay-1``, ``relay-2``, ...): each records the calls it receives into
its own chain, as the server does, and passes each on to the next hop the way it came,
a fork as a fork, an awaited call as an awaited call whose result it checks and
returns. So an awaited call of the client completes only after every hop logged it,
and each immortal checks the sequence it sees.
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


def chain_names(relays: int) -> list[str]:
    """The instances of a chain with ``relays`` relays, from the client to the server."""
    return ["client", *(f"relay-{index}" for index in range(1, relays + 1)), "server"]


def next_hop(name: str, relays: int) -> str:
    """Where instance ``name`` of a chain with ``relays`` relays sends its calls."""
    names = chain_names(relays)
    return names[names.index(name) + 1]


def _relays_configured() -> int:
    return int(os.environ.get("AMBROSIA_CHAIN_RELAYS", "0"))


def _write_status(path: Path, status: dict[str, object]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(status))
    os.replace(temporary, path)


class ChainServer(Immortal):
    def __init__(self) -> None:
        self.count = 0
        self.chain = ""
        self.out_of_order: list[int] = []
        # Results a relay got back from its next hop that were not what it sent for.
        self.bad_results: list[int] = []

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

    def _status(self) -> dict[str, object]:
        """What the status file says (a version of the class adds its own fields)."""
        return {
            "count": self.count,
            "chain": self.chain,
            "out_of_order": self.out_of_order[:10],
            "bad_results": self.bad_results[:10],
        }

    async def _status_loop(self) -> None:
        path = Path(os.environ["AMBROSIA_STATUS_DIR"]) / f"{self.name}.json"
        while True:
            _write_status(path, self._status())
            await asyncio.sleep(STATUS_INTERVAL_S)


class ChainRelay(ChainServer):
    """A hop between client and server: records what it receives, passes it on.

    The next hop is fixed at the first start (from the instance name and the number of
    relays in the environment) and kept in the logged state, so replay never reads the
    environment.
    """

    def __init__(self) -> None:
        super().__init__()
        self.next_hop = ""

    async def on_first_start(self) -> None:
        self.next_hop = next_hop(self.name, _relays_configured())

    @rpc
    async def record(self, n: int) -> int:  # type: ignore[override]
        self._record(n)
        value: int = await self.proxy(ChainServer, self.next_hop).record(n)
        if value != n * 2:
            self.bad_results.append(n)
        return value

    @rpc
    def record_fork(self, n: int) -> None:
        self._record(n)
        self.proxy(ChainServer, self.next_hop).record_fork.fork(n)


class ChainClient(Immortal):
    def __init__(self) -> None:
        self.next_hop = "server"
        self.total = 0
        self.sent = 0
        self.results = 0
        self.result_chain = ""
        self.bad_results: list[int] = []
        self.done = False

    async def on_first_start(self) -> None:
        self.total = int(os.environ.get("AMBROSIA_CHAIN_TOTAL", "1000"))
        # The first hop whatever this client is registered as (tests name it freely).
        self.next_hop = chain_names(_relays_configured())[1]
        self.this.step.fork(1)

    @rpc
    async def step(self, n: int) -> None:
        server = self.proxy(ChainServer, self.next_hop)
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

    def _status(self) -> dict[str, object]:
        """What the status file says (a version of the class adds its own fields)."""
        return {
            "sent": self.sent,
            "results": self.results,
            "result_chain": self.result_chain,
            "done": self.done,
            "total": self.total,
            "bad_results": self.bad_results[:10],
        }

    async def _status_loop(self) -> None:
        path = Path(os.environ["AMBROSIA_STATUS_DIR"]) / f"{self.name}.json"
        while True:
            _write_status(path, self._status())
            await asyncio.sleep(STATUS_INTERVAL_S)
