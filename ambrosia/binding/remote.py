"""The Python binding as a process of its own, talking to ``ambrosia coordinator``.

``ambrosia run NAME --separate`` runs the same application as ``ambrosia run NAME``, but
its coordinator is another process and the two speak the binding protocol (PROTOCOL.md,
docs/bindings.md) over two loopback sockets: this process connects to the coordinator's
receive port (it sends messages there) and then to its send port (it reads log records
there). The dispatcher is the in-process one; only where its output goes and where its
pages come from differ:

- output to a destination is written as outgoing RPCs (type 0 with the destination's
  name), impulses as outgoing RPCs to self of kind impulse, all of one page's output in
  one write after the page;
- each page record's groups go to ``Dispatcher.dispatch`` with their sender (from the
  record's source markers); the InitialMessage this binding sent on its first start (a
  complete first-start RPC) comes back in the log and is dispatched as that RPC;
- TakeBecomingPrimaryCheckpoint: send the InitialMessage if the application never
  started, then the checkpoint, then become primary (impulses allowed from then on);
- TakeCheckpoint: the checkpoint if the dispatcher is quiescent, else TakeCheckpoint
  back ("not now": the coordinator asks again after the next page).

The checkpoint is opaque to the coordinator: a 4-byte big-endian length, the
dispatcher's small state as JSON, then the application's state bytes
(``ambrosia.binding.state``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable
from typing import Any

import orjson

from ambrosia.binding.dispatcher import Dispatcher
from ambrosia.binding.immortal import Immortal
from ambrosia.errors import AmbrosiaError, ProtocolError
from ambrosia.protocol.binding_link import (
    BindingEnd,
    BindingEvent,
    CheckpointLoaded,
    ControlReceived,
    PageReceived,
    outgoing_from_incoming,
)
from ambrosia.wire.messages import (
    BecomingPrimary,
    Ping,
    TakeBecomingPrimaryCheckpoint,
    TakeCheckpoint,
)
from ambrosia.wire.varint import decode_zigzag_int

logger = logging.getLogger("ambrosia.binding.remote")

_STATE_HEAD = struct.Struct(">I")
# Messages at least this large are dispatched from a view of the page (each is copied
# once, as its arguments); smaller ones from one copy of their group.
_VIEW_MESSAGE_BYTES_MIN = 1024
_STREAM_LIMIT_BYTES = 4 * 1024 * 1024  # asyncio's 64 KiB default reads big pages in slivers
_TYPE_INITIAL_MESSAGE = 9
_SEND_BUFFER_BYTES_MAX = 16 * 1024 * 1024
_EVENTS_QUEUED_MAX = 64
_PREFIXES_MAX = 4096
_DIRECT_BODY_BYTES = 16 * 1024
_PREFIX_HEAD_BYTES_MAX = 32
RECORD_BYTES_MAX = 64 * 1024 * 1024


class _Writer:
    """Output to one destination, written as outgoing RPCs into the shared buffer."""

    __slots__ = ("_name", "_out", "_prefixes", "_write")

    def __init__(
        self, destination: str, out: bytearray, write: Callable[[bytes | bytearray], None]
    ) -> None:
        self._name = destination.encode()
        self._out = out
        self._write = write
        # An incoming-form head (size, type, method, kind...) -> the outgoing-form bytes
        # before the body. Calls of one method with arguments of one size share a head,
        # so a run of them costs one dictionary lookup each.
        self._prefixes: dict[bytes, bytes] = {}

    def add(self, head: bytes, body: bytes) -> None:
        prefix = self._prefixes.get(head)
        if prefix is None:
            prefix = self._prefix(head)
        out = self._out
        out += prefix
        if len(body) < _DIRECT_BODY_BYTES:
            out += body
        else:
            # A large body goes to the socket as it is, after what came before it: copied
            # into the shared buffer it would make that buffer grow again on every page.
            self._write(out)
            out.clear()
            self._write(body)

    def _prefix(self, head: bytes) -> bytes:
        # A head is a message cut before its body: converted as the whole message would be.
        prefix = outgoing_from_incoming(self._name, head)
        if len(head) <= _PREFIX_HEAD_BYTES_MAX:  # not a whole impulse, say
            if len(self._prefixes) >= _PREFIXES_MAX:
                self._prefixes.clear()
            self._prefixes[bytes(head)] = prefix
        return prefix

    def report_again(self) -> None:
        """Never over a bound here: the socket's flow control slows this process."""


class RemoteBinding:
    """One application behind the binding protocol.

    ``write`` sends its bytes or copies them before it returns (as an asyncio transport
    does): the buffer it is given is reused.
    """

    def __init__(
        self,
        instance: str,
        app_factory: Callable[[], Immortal],
        write: Callable[[bytes | bytearray], None],
    ) -> None:
        self.instance = instance
        self._write = write
        self._out = bytearray()
        self._writers: dict[str, _Writer] = {}
        self.dispatcher = Dispatcher(
            instance, app_factory(), self.open_stream, self.log_impulse, app_factory=app_factory
        )
        self.dispatcher.replaying = True
        self._initial_sent = False
        self._flush_scheduled = False

    # -- what the dispatcher writes to -------------------------------------------------

    def open_stream(self, destination: str) -> _Writer:
        # Self-calls go to "" (self): the coordinator logs them as this instance's input.
        key = "" if destination == self.instance else destination
        writer = self._writers.get(key)
        if writer is None:
            writer = self._writers[key] = _Writer(key, self._out, self._write)
        return writer

    def log_impulse(self, message: bytes) -> None:
        self.open_stream(self.instance).add(message, b"")
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._out:
            # The transport sends what it can at once and copies only the rest.
            self._write(self._out)
            self._out.clear()

    # -- what the coordinator sends -----------------------------------------------------

    async def handle(self, event: BindingEvent) -> None:
        kind = type(event)
        if kind is PageReceived:
            assert isinstance(event, PageReceived)
            self.deliver(event)
        elif kind is CheckpointLoaded:
            assert isinstance(event, CheckpointLoaded)
            await self.load(event.data)
        elif kind is ControlReceived:
            assert isinstance(event, ControlReceived)
            await self._control(event.message)

    def deliver(self, page: PageReceived) -> None:
        dispatcher = self.dispatcher
        dispatcher.page_sequence = page.sequence
        for source, data in page.groups:
            position = 0
            end = len(data)
            if (
                end
                and type(data) is not bytes
                and decode_zigzag_int(data, 0)[0] < _VIEW_MESSAGE_BYTES_MIN
            ):
                # Small messages: one copy of the group makes each message's slice cheaper
                # than on a view. Large ones are copied once each, as their arguments.
                data = bytes(data)
            if source == self.instance and not dispatcher.started:
                position = self._maybe_initial(data)
            while position < end:
                position = dispatcher.dispatch(source, data, position, end)

    def _maybe_initial(self, data: bytes | memoryview) -> int:
        """Dispatch the InitialMessage if the group starts with it; where to go on."""
        size, start = decode_zigzag_int(data, 0)
        if data[start] != _TYPE_INITIAL_MESSAGE:
            return 0
        inner = data[start + 1 : start + size]
        self.dispatcher.dispatch(self.instance, inner, 0, len(inner))
        return start + size

    async def load(self, data: bytes) -> None:
        if len(data) < _STATE_HEAD.size:
            raise ProtocolError(f"a checkpoint of {len(data)} bytes is not this binding's")
        (length,) = _STATE_HEAD.unpack_from(data, 0)
        head_end = _STATE_HEAD.size + length
        binding = orjson.loads(data[_STATE_HEAD.size : head_end])
        await self.dispatcher.load_checkpoint(binding, data[head_end:])
        logger.info("%s: checkpoint loaded (%d bytes)", self.instance, len(data))

    async def _control(self, message: Any) -> None:
        kind = type(message)
        if kind is TakeBecomingPrimaryCheckpoint:
            if not self.dispatcher.started and not self._initial_sent:
                self._initial_sent = True
                self._out += BindingEnd.initial_message(self.dispatcher.first_start_message())
            self._checkpoint_or_refuse()
            await self._become_primary()
        elif kind is TakeCheckpoint:
            self._checkpoint_or_refuse()
        elif kind is BecomingPrimary:
            await self._become_primary()
        elif kind is Ping:
            self._out += BindingEnd.ping_return(message.payload)

    def _checkpoint_or_refuse(self) -> None:
        if not self.dispatcher.quiescent:
            self._out += BindingEnd.take_checkpoint()
            return
        binding, state = self.dispatcher._state()
        head = orjson.dumps(binding)
        self._out += BindingEnd.checkpoint(_STATE_HEAD.pack(len(head)) + head + state)

    async def _become_primary(self) -> None:
        dispatcher = self.dispatcher
        if dispatcher.is_primary:
            return
        dispatcher.replaying = False
        dispatcher.is_primary = True
        self.flush()
        logger.info("%s: binding primary", self.instance)
        await dispatcher.become_primary()


class _RecordReader(asyncio.BufferedProtocol):
    """Reads the coordinator's log records straight into the binding end's buffer.

    Events wait here until the binding takes them (``events``); past
    ``_EVENTS_QUEUED_MAX`` of them the socket is not read (the coordinator's own flow
    control then holds its pages).
    """

    def __init__(self, end: BindingEnd) -> None:
        self._end = end
        self._events: list[BindingEvent] = []
        self._closed = False
        self._error: BaseException | None = None
        self._ready = asyncio.Event()
        self._transport: asyncio.BaseTransport | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._end.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        try:
            self._events += self._end.buffer_updated(nbytes)
        except ProtocolError as error:
            self._error = error
            self._closed = True
        self._ready.set()
        if len(self._events) > _EVENTS_QUEUED_MAX and not self._paused:
            assert isinstance(self._transport, asyncio.ReadTransport)
            self._transport.pause_reading()
            self._paused = True

    def eof_received(self) -> bool:
        self._closed = True
        self._ready.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if exc is not None and self._error is None:
            self._error = exc
        self._ready.set()

    async def events(self) -> list[BindingEvent] | None:
        """The events received so far (waiting for one); None at the end of the stream."""
        while not self._events:
            if self._error is not None:
                raise self._error
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        events, self._events = self._events, []
        if self._paused:
            self._paused = False
            assert isinstance(self._transport, asyncio.ReadTransport)
            self._transport.resume_reading()
        return events


async def run_binding(
    instance: str,
    app_factory: Callable[[], Immortal],
    *,
    host: str,
    receive_port: int,
    send_port: int,
    connect_timeout_s: float = 30.0,
) -> int:
    """Connect to the coordinator and run until it closes the connection; exit code."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + connect_timeout_s
    reader = _RecordReader(BindingEnd(record_bytes_max=RECORD_BYTES_MAX))
    while True:
        to_coordinator: asyncio.StreamWriter | None = None
        try:
            _, to_coordinator = await asyncio.open_connection(
                host, receive_port, limit=_STREAM_LIMIT_BYTES
            )
            from_coordinator, _ = await loop.create_connection(lambda: reader, host, send_port)
            break
        except OSError as error:
            if to_coordinator is not None:
                to_coordinator.close()  # the pair is made again, receive port first
            if loop.time() > deadline:
                logger.error("%s: cannot reach the coordinator: %s", instance, error)
                return 1
            await asyncio.sleep(0.1)
    # ``drain`` waits down to the low mark (asyncio's default 16 KiB would empty the
    # buffer before the next page's output is made): two pages' output may be in flight.
    to_coordinator.transport.set_write_buffer_limits(
        high=_SEND_BUFFER_BYTES_MAX, low=_SEND_BUFFER_BYTES_MAX // 2
    )
    binding = RemoteBinding(instance, app_factory, to_coordinator.write)
    try:
        while True:
            events = await reader.events()
            if events is None:
                logger.info("%s: the coordinator closed the connection", instance)
                return 0
            for event in events:
                await binding.handle(event)
            binding.flush()
            if to_coordinator.transport.get_write_buffer_size() > _SEND_BUFFER_BYTES_MAX:
                await to_coordinator.drain()
    except (AmbrosiaError, ConnectionError) as error:
        logger.error("%s: binding stopped: %s", instance, error)
        return 1
    finally:
        binding.dispatcher.stop_tasks()
        for transport in (to_coordinator.transport, from_coordinator):
            with contextlib.suppress(Exception):
                transport.close()
