"""The sans-IO state of the system: bytes and numbers in, decisions and bytes out.

No event loop, no sockets, no storage calls; every module here is unit-tested without
an event loop (``tests/protocol``), and ``tests/test_layering.py`` keeps it from
importing the coordinator, the binding or asyncio.

- ``outputs``: output streams with their sequence numbers, batches, acknowledgements,
  trims and bounds, and the one method that hands out unsent batches;
- ``inputs``: the receiver's marks per sender (accepted, delivered, their digests) and
  the sequence check every incoming batch passes;
- ``batch``: the receiver's check of an incoming batch's messages;
- ``checkpoint``: the checkpoint record;
- ``selfcalls``: the self-call audit replay runs against the log;
- ``recovery_plan``: what a start restores and replays, and which checkpoints it keeps;
- ``binding_link``: the binding protocol's two ends (PROTOCOL.md).
"""
