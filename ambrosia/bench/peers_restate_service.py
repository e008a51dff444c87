"""The Restate service of ``ambrosia-bench peers``: the virtual object ``Counter``.

Served by hypercorn (``ambrosia.bench.peers_restate`` starts it). A module of its own,
imported only there, since it needs the ``restate-sdk`` package (the ``peers`` extra), and
without postponed annotations: the SDK reads the handler's annotations at definition
time to choose its serializers.
"""

import restate

__all__ = ["app"]

counter = restate.VirtualObject("Counter")


@counter.handler()
async def add(context: restate.ObjectContext, payload: str) -> int:
    """One more call: the state ``count`` one higher, returned."""
    count = (await context.get("count", type_hint=int) or 0) + 1
    context.set("count", count)
    return count


app = restate.app([counter])
