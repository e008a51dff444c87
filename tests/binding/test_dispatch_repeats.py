"""The repeated-shape shortcut of ``Dispatcher.dispatch`` changes speed, never meaning.

Runs of raw-bytes forks of one size to one method take a shortcut (one ``startswith``
instead of a parse). Interleave them with other sizes, other methods, other encodings,
a failing handler and a truncated tail, and the handlers must see exactly what a
message-by-message parse sees, in order, whether the group is ``bytes`` (shortcut on) or a
``memoryview`` (shortcut off).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from ambrosia import Immortal, rpc
from ambrosia.binding import codec
from ambrosia.binding.dispatcher import Dispatcher, frame_prefix, rpc_header
from ambrosia.binding.immortal import method_table
from ambrosia.protocol.outputs import OutputStream
from ambrosia.wire.messages import KIND_FORK


class Recorder(Immortal):
    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    @rpc
    def raw(self, payload: bytes) -> None:
        self.seen.append(("raw", payload))

    @rpc
    def other(self, payload: bytes) -> None:
        self.seen.append(("other", payload))

    @rpc
    def boom(self, payload: bytes) -> None:
        self.seen.append(("boom", payload))
        raise RuntimeError("handler failure is the handler's business")

    @rpc
    def number(self, n: int) -> None:
        self.seen.append(("number", n))


TABLE = method_table(Recorder)


def _fork(name: str, *args: Any) -> bytes:
    if len(args) == 1 and type(args[0]) is bytes:
        body = b"\x00" + args[0]
    else:
        body = codec.encode_args(args)
    header = rpc_header(TABLE[name].method_id, KIND_FORK)
    return frame_prefix(len(header) + len(body)) + header + body


def _dispatch(data: bytes | memoryview) -> tuple[list[tuple[str, Any]], int]:
    async def main() -> tuple[list[tuple[str, Any]], int]:
        app = Recorder()

        def sink(destination: str) -> OutputStream:
            return OutputStream(
                destination,
                buffer_bytes_max=1 << 30,
                batch_bytes_max=1 << 30,
                on_dirty=lambda s: None,
                on_blocked=lambda s: None,
                on_unblocked=lambda s: None,
            )

        dispatcher = Dispatcher("recorder", app, sink, lambda message: None)
        end = dispatcher.dispatch("peer", data, 0, len(data))
        return app.seen, end

    return asyncio.run(main())


def _mixed_log(seed: int) -> tuple[bytes, list[tuple[str, Any]]]:
    rng = random.Random(seed)
    parts: list[bytes] = []
    expected: list[tuple[str, Any]] = []
    for _ in range(400):
        choice = rng.random()
        if choice < 0.6:
            payload = bytes([rng.randrange(256)]) * rng.choice([16, 16, 16, 17, 200])
            parts.append(_fork("raw", payload))
            expected.append(("raw", payload))
        elif choice < 0.75:
            payload = bytes(16)
            parts.append(_fork("other", payload))
            expected.append(("other", payload))
        elif choice < 0.85:
            payload = b"b" * 16
            parts.append(_fork("boom", payload))
            expected.append(("boom", payload))
        else:
            n = rng.randrange(1000)
            parts.append(_fork("number", n))
            expected.append(("number", n))
    return b"".join(parts), expected


@pytest.mark.parametrize("seed", range(5))
def test_shortcut_sees_what_a_full_parse_sees(seed: int) -> None:
    data, expected = _mixed_log(seed)
    with_shortcut, end_bytes = _dispatch(data)
    without_shortcut, end_view = _dispatch(memoryview(data))
    assert with_shortcut == expected
    assert without_shortcut == expected
    assert end_bytes == end_view == len(data)


def test_truncated_repeat_at_the_end_is_not_dispatched() -> None:
    message = _fork("raw", bytes(16))
    data = message * 5 + message[:-3]
    seen, end = _dispatch(data)
    assert seen == [("raw", bytes(16))] * 5
    assert end == len(data)
