"""A new version of the forwarder example that changes one outgoing call (for
``ambrosia replay-test``): message 1500 goes to the sink in capitals."""

from __future__ import annotations

from examples.forwarder.app import SINK, Forwarder, Sink

CHANGED = "message 1500"


class ForwarderV2(Forwarder):
    def _finish(self, message: str) -> None:
        if message == CHANGED:
            self.count += 1
            self.proxy(Sink, SINK).send.fork(message.upper())
            return
        super()._finish(message)
