"""``proxy.method``: the object an application calls to send an RPC.

Its own module, apart from ``immortal`` (whose classes applications subclass), so that
the compiled build (``AMBROSIA_MYPYC=1``, see ``setup.py``) can compile it: ``fork`` of
one ``bytes`` argument runs once per streamed call and is the client's hot path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ambrosia.wire.messages import _SIZE_PREFIX, _SIZE_TABLE_MAX

if TYPE_CHECKING:
    from ambrosia.binding.dispatcher import Dispatcher, PendingCall
    from ambrosia.binding.immortal import MethodInfo


class BoundMethod:
    """``proxy.method``: call it to await a result, ``.fork`` to fire and forget.

    Keep one around (``send = proxy.method.fork``) to stream calls: the fork of a single
    ``bytes`` argument is the hot path. Its frame head (size prefix through argument tag)
    depends only on the payload's length, so the head of the last length is kept and a
    run of same-size forks costs a few attribute reads and one ``add``.
    """

    __slots__ = (
        "_destination",
        "_dispatcher",
        "_fork_head",
        "_fork_size",
        "_info",
        "_raw_head",
        "_stream",
    )

    def __init__(self, dispatcher: Dispatcher, destination: str, info: MethodInfo) -> None:
        self._dispatcher = dispatcher
        self._destination = destination
        self._info = info
        self._stream = dispatcher.stream_for(destination)
        self._raw_head = dispatcher.raw_fork_head(info)
        self._fork_size = -1  # payload length that ``_fork_head`` frames; -1: none yet
        self._fork_head = b""

    def __call__(self, *args: Any) -> PendingCall:
        return self._dispatcher.call_async(self._destination, self._info, args)

    def fork(self, *args: Any) -> None:
        if len(args) == 1:
            body = args[0]
            if type(body) is bytes and self._dispatcher.in_handler:
                if len(body) == self._fork_size:
                    self._stream.add(self._fork_head, body)
                    return
                if self._raw_head:  # empty for impulse methods: refused below
                    size = len(body) + len(self._raw_head)
                    if size < _SIZE_TABLE_MAX:
                        self._fork_head = _SIZE_PREFIX[size] + self._raw_head
                        self._fork_size = len(body)
                        self._stream.add(self._fork_head, body)
                        return
        self._dispatcher.call_fork(self._destination, self._info, args)

    def impulse(self, *args: Any) -> None:
        self._dispatcher.call_impulse(self._destination, self._info, args)
