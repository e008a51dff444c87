"""The coordinator's receive port under a binding that writes faster than the coordinator
takes its calls (``socket_binding.Receiver``), on real loopback TCP: the bytes received and
not yet parsed stay under the bound (the socket is not read past it, so the binding's own
writes block), and once the coordinator takes events again every call arrives, in order."""

from __future__ import annotations

import asyncio
import socket
import threading

from ambrosia.coordinator import socket_binding
from ambrosia.coordinator.socket_binding import BindingPorts
from ambrosia.protocol.binding_link import CoordinatorEnd, RpcReceived, outgoing_from_incoming
from ambrosia.wire.messages import IncomingRpc, RpcKind, encode

PAYLOAD_BYTES = 64 * 1024
CALLS = 400  # 25 MiB: three times the bound


def call(number: int) -> bytes:
    payload = number.to_bytes(4, "big") * (PAYLOAD_BYTES // 4)
    return outgoing_from_incoming(b"peer", encode(IncomingRpc(3, RpcKind.FORK, payload)))


def test_a_fast_binding_is_held_at_the_bound_and_loses_nothing() -> None:
    async def scenario() -> None:
        ports = BindingPorts.bind("server", "127.0.0.1", 0, 0)
        await ports.start()
        data = b"".join(call(number) for number in range(CALLS))
        receive = socket.create_connection(("127.0.0.1", ports.receive_port))
        send = socket.create_connection(("127.0.0.1", ports.send_port))
        sent = threading.Event()

        def write_all() -> None:
            receive.sendall(data)  # blocks while the coordinator does not read
            sent.set()

        writer = threading.Thread(target=write_all, daemon=True)
        try:
            attachment = await asyncio.wait_for(ports.next_attachment(), 10)
            end = CoordinatorEnd(
                committer_id=1, message_bytes_max=1 << 20, checkpoint_bytes_max=1 << 20
            )
            attachment.receiver.install(end)
            writer.start()
            # Nobody takes events for a while: the receiver reads up to the bound, stops.
            peak = 0
            for _ in range(40):
                await asyncio.sleep(0.025)
                peak = max(peak, end.buffered_bytes)
            bound = socket_binding._QUEUED_BYTES_MAX
            assert bound // 2 < peak <= bound + 1024 * 1024, peak
            assert not sent.is_set()  # the rest waits in the binding's socket, not here
            numbers: list[int] = []
            while len(numbers) < CALLS:
                events = await asyncio.wait_for(attachment.receiver.events(), 10)
                assert events is not None
                assert end.buffered_bytes <= bound + 1024 * 1024
                for event in events:
                    assert isinstance(event, RpcReceived) and event.destination == "peer"
                    size = len(event.message) // event.count
                    for at in range(0, len(event.message), size):
                        # The last 4 bytes of each message: its payload's number.
                        numbers.append(int.from_bytes(event.message[at + size - 4 : at + size]))
            assert numbers == list(range(CALLS))
            assert sent.wait(10)
        finally:
            receive.close()
            send.close()
            ports.close()

    asyncio.run(scenario())
