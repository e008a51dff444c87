"""The paper's introduction: a client calls ``inc()`` twice and prints 1 and 2.

Kill either process at any moment and start it again with the same command: the output
is still 1 and 2, because each call is logged before it runs, replayed after a crash and
delivered exactly once.

    ambrosia register server --address 127.0.0.1:7001 --log file:///tmp/ambrosia-counter \
        --app examples.counter.app:Counter
    ambrosia register client --address 127.0.0.1:7002 --log file:///tmp/ambrosia-counter \
        --app examples.counter.app:Client
    ambrosia run server --plaintext &
    ambrosia run client --plaintext

(``README.md`` beside this file has the whole walkthrough.)
"""

from __future__ import annotations

from ambrosia import Immortal, rpc


class Counter(Immortal):
    def __init__(self) -> None:
        self.count = 0

    @rpc
    def inc(self) -> int:
        self.count += 1
        return self.count


class Client(Immortal):
    def __init__(self) -> None:
        self.results: list[int] = []

    async def on_first_start(self) -> None:
        server = self.proxy(Counter, "server")
        for _ in range(2):
            value = await server.inc()
            self.results.append(value)
            if not self.replaying:
                print(value, flush=True)
