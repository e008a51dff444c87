"""Fuzzing the peer protocol over a socket: random bytes, random frames and mutations of
valid batches from a registered peer ("fuzzer") to a running runtime. Whatever arrives,
the instance keeps serving a real peer exactly once, never fails, and its log holds
nothing but well-formed calls: the audit that every start runs reads it cleanly and every
batch logged from the fuzzer passes the same check the link applies.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from collections.abc import Coroutine
from typing import Any

from coordinator_peers import LIVENESS_S, Pair, forget
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ambrosia.coordinator.recovery import read_checkpoint, read_log
from ambrosia.protocol.batch import check_batch
from ambrosia.wire.messages import (
    PEER_PROTOCOL_VERSION,
    DataBatch,
    Hello,
    IncomingRpc,
    RpcKind,
    encode,
)
from ambrosia.wire.varint import encode_zigzag_long

HELLO = encode(Hello(PEER_PROTOCOL_VERSION, "fuzzer", "server", 1))


def valid_calls(count: int) -> bytes:
    return b"".join(
        encode(IncomingRpc(0, RpcKind.ASYNC, encode_zigzag_long(n + 1) + b"\x00x"))
        for n in range(count)
    )


@st.composite
def attacks(draw: st.DrawFn) -> bytes:
    shape = draw(st.sampled_from(["bytes", "hello+bytes", "mutated batch", "frames"]))
    if shape == "bytes":
        return draw(st.binary(max_size=200))
    if shape == "hello+bytes":
        return HELLO + draw(st.binary(max_size=200))
    if shape == "mutated batch":
        count = draw(st.integers(1, 6))
        frame = bytearray(encode(DataBatch(1, count, count, valid_calls(count))))
        for _ in range(draw(st.integers(1, 4))):
            index = draw(st.integers(0, len(frame) - 1))
            frame[index] = draw(st.integers(0, 255))
        return HELLO + bytes(frame)
    count = draw(st.integers(-2, 2**31 - 1))
    replayable = draw(st.sampled_from([count, 0, count - 1]))
    first_seq = draw(st.integers(1, 3))
    payload = draw(st.binary(max_size=64))
    head = bytes((17,)) + encode_zigzag_long(first_seq)
    head += encode_zigzag_long(count) + encode_zigzag_long(replayable)
    return HELLO + encode_zigzag_long(len(head) + len(payload)) + head + payload


def attack(port: int, data: bytes) -> None:
    """One connection: send, wait briefly for an answer or the close, hang up."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(0.05)
        try:
            sock.sendall(data)
            sock.recv(65536)
        except OSError:
            pass  # timed out (the coordinator waits for more) or reset (refused)


def test_fuzzed_peers_never_reach_the_log_or_stop_the_real_peer() -> None:
    total = 300
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def on_loop(coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(40)

    name = f"fuzz-{uuid.uuid4().hex}"
    pair = Pair(name)
    pair.peers.registered.add("fuzzer")

    async def begin() -> None:
        await pair.start()
        pair.begin(total=total, per_step=2)

    async def audit() -> None:
        await pair.wait(lambda: pair.finished(total), LIVENESS_S, "the real peer")
        pair.check_exactly_once(total)
        server = pair.server
        assert server is not None and server.committer is not None
        assert server.failure is None
        # The log audit every start runs: every page readable, and every batch logged
        # from the fuzzer passes the link's own check.
        await asyncio.wait_for(server.committer.drain(), LIVENESS_S)
        meta, _ = await server.store.read_meta()
        assert meta is not None and meta.checkpoint is not None
        policy = server.config.retry_policy
        checkpoint = await read_checkpoint(server.store, meta.checkpoint, policy)
        reading = await read_log(server.store, checkpoint, server.config.page_bytes_max, policy)
        for _, page in reading.pages:
            for group in page.groups:
                if group.source == "fuzzer":
                    check_batch(bytes(group.messages), group.count, group.replayable_count)

    try:
        on_loop(begin())
        assert pair.server is not None
        port = pair.server.bound_port

        @settings(
            max_examples=150,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(attacks())
        def check(data: bytes) -> None:
            attack(port, data)

        check()
        on_loop(audit())
    finally:
        on_loop(pair.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        forget(name)
