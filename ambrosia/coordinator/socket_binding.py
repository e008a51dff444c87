"""The coordinator's end of a binding process: two loopback sockets (PROTOCOL.md).

``ambrosia coordinator NAME`` runs the coordinator alone; the application runs in a
binding process, in any language, that connects to the instance's *receive* port
(binding -> coordinator messages) and then to its *send* port (coordinator -> binding
log records). :class:`BindingPorts` owns the two listening sockets for the whole life
of the process and pairs the two connections of one binding into an
:class:`Attachment`; :class:`SocketBinding` is the ``Binding`` (``binding_port``) the
runtime drives, one per runtime life, speaking through the sans-IO
``ambrosia.protocol.binding_link.CoordinatorEnd``.

One binding at a time: a connection to either port while a binding is attached (or
half-attached) is closed at once, and the reason is logged. A binding that breaks the
protocol (garbage, an unknown type, type 13, a Checkpoint shorter than announced, an
impulse before it was told it is primary) or disconnects is *lost*: the reason is
logged, its connections are closed, and the runtime life ends (``on_lost``). Nothing it
sent half is logged: the decoder only yields complete messages, and a checkpoint only
counts once all its bytes are in. ``ambrosia.host`` then recovers the instance from its
log at once, with its peers, and waits for the next binding, which gets the latest
checkpoint and the replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Mapping
from typing import Any

from ambrosia.coordinator.binding_port import BindingHost, BindingState
from ambrosia.errors import AmbrosiaError, BindingProtocolError, ConfigError
from ambrosia.log.page import Page
from ambrosia.names import validate_instance_name
from ambrosia.protocol.binding_link import (
    AttachRequested,
    CheckpointAsked,
    CheckpointReceived,
    CoordinatorEnd,
    CoordinatorEvent,
    InitialReceived,
    PingReceived,
    RpcReceived,
)
from ambrosia.protocol.outputs import OutputStream
from ambrosia.wire.messages import (
    KIND_IMPULSE,
    RESERVED_RESULT,
    PingReturn,
    TakeBecomingPrimaryCheckpoint,
    TakeCheckpoint,
    encode,
)
from ambrosia.wire.varint import decode_zigzag_int

logger = logging.getLogger("ambrosia.coordinator.binding")

# The send port's stream reader (nothing is read there; a binding that writes to it fills
# at most this much before its socket is paused).
_STREAM_LIMIT_BYTES = 4 * 1024 * 1024
# Bytes from the receive port not yet parsed: past this the socket is not read until the
# handler catches up (its waits are the flow control).
_QUEUED_BYTES_MAX = 8 * 1024 * 1024
# A binding's checkpoint is gathered in memory before it is written (stores take whole
# checkpoints): the largest one accepted.
CHECKPOINT_BYTES_MAX = 1024 * 1024 * 1024
_TAKE_CHECKPOINT = encode(TakeCheckpoint())
_TAKE_BECOMING_PRIMARY_CHECKPOINT = encode(TakeBecomingPrimaryCheckpoint())
_TYPE_INITIAL_MESSAGE = 9
_EARLY_IMPULSES_MAX = 10_000


class Receiver(asyncio.BufferedProtocol):
    """The receive port's connection: the binding's bytes are read straight into the
    ``CoordinatorEnd``'s buffer (no stream reader copying them in, out and along) and
    parsed when ``SocketBinding`` asks for the next events, all that arrived by then at
    once (so a run of calls is found whole however the stream was cut into reads).

    Not read at all until an end is installed (``install``); past ``_QUEUED_BYTES_MAX``
    bytes received and not parsed, not read until they are.
    """

    def __init__(self, ports: BindingPorts) -> None:
        self._ports = ports
        self.transport: asyncio.Transport | None = None
        self._end: CoordinatorEnd | None = None
        self._error: BaseException | None = None
        self._eof = False
        self._ready = asyncio.Event()
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.pause_reading()
        self._paused = True
        self._ports._receive_connected(self)

    def install(self, end: CoordinatorEnd) -> None:
        """Parse what arrives with ``end`` from now on; start reading."""
        self._end = end
        self._resume()

    def get_buffer(self, sizehint: int) -> memoryview:
        assert self._end is not None
        return self._end.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        end = self._end
        assert end is not None
        end.received(nbytes)
        self._ready.set()
        if end.buffered_bytes > _QUEUED_BYTES_MAX:
            self._pause()

    def eof_received(self) -> bool:
        self._eof = True
        self._ready.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if exc is not None and self._error is None:
            self._error = exc
        self._ready.set()

    async def events(self) -> list[CoordinatorEvent] | None:
        """The events the bytes received so far complete (waiting for one); None at the
        end of the stream.

        Raises what broke the stream (``BindingProtocolError``, a ``ConnectionError``)
        once the events before it were taken.
        """
        end = self._end
        assert end is not None
        while True:
            events = end.take_events()
            # Read on, even without a complete message: one larger than the bound above
            # is gathered whole (``CoordinatorEnd.get_buffer`` makes room for it).
            self._resume()
            if events:
                return events
            if self._error is not None:
                raise self._error
            if self._eof:
                return None
            self._ready.clear()
            await self._ready.wait()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _pause(self) -> None:
        if not self._paused and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
            self._paused = True

    def _resume(self) -> None:
        if self._paused and self.transport is not None and not self.transport.is_closing():
            self._paused = False
            self.transport.resume_reading()


class Attachment:
    """The two connections of one binding process."""

    def __init__(self, receiver: Receiver, send_writer: asyncio.StreamWriter) -> None:
        self.receiver = receiver  # binding -> coordinator
        self.writer = send_writer  # coordinator -> binding
        self.closed = asyncio.Event()
        assert receiver.transport is not None
        self.peer = _peer_name(receiver.transport)

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self.receiver.abort()
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


def _peer_name(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


class BindingPorts:
    """The receive and send ports; pairs one binding's two connections at a time."""

    def __init__(
        self,
        instance: str,
        receive: socket.socket,
        send: socket.socket,
        *,
        attach_timeout_s: float = 10.0,
    ) -> None:
        self.instance = instance
        self._sockets = (receive, send)
        self.attach_timeout_s = attach_timeout_s
        self.receive_port = receive.getsockname()[1]
        self.send_port = send.getsockname()[1]
        self._servers: list[asyncio.Server] = []
        self._pending: Receiver | None = None
        self._pending_timer: asyncio.TimerHandle | None = None
        self.attached: Attachment | None = None
        self._ready: asyncio.Queue[Attachment] = asyncio.Queue(maxsize=1)
        self.refused = 0

    @classmethod
    def bind(
        cls, instance: str, host: str, receive_port: int, send_port: int, **options: Any
    ) -> BindingPorts:
        """Listen on ``host`` (loopback) at the two ports (0: any free port)."""
        sockets = []
        try:
            for port in (receive_port, send_port):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
                sock.listen(8)
        except OSError as error:
            for sock in sockets:
                sock.close()
            raise ConfigError(
                f"{instance}: cannot listen for its binding on {host} ports "
                f"{receive_port}/{send_port}: {error}"
            ) from error
        return cls(instance, sockets[0], sockets[1], **options)

    async def start(self) -> None:
        receive, send = self._sockets
        for sock in (receive, send):
            sock.setblocking(False)
        loop = asyncio.get_running_loop()
        self._servers = [
            await loop.create_server(lambda: Receiver(self), sock=receive),
            await asyncio.start_server(self._send_connected, sock=send, limit=_STREAM_LIMIT_BYTES),
        ]

    def close(self) -> None:
        for server in self._servers:
            server.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
        if self.attached is not None:
            self.attached.close()
        self._drop_pending()

    async def next_attachment(self) -> Attachment:
        """The next binding to attach (both its connections made)."""
        return await self._ready.get()

    def detach(self, attachment: Attachment) -> None:
        attachment.close()
        if self.attached is attachment:
            self.attached = None

    def _refuse(self, transport: asyncio.BaseTransport, port: str, reason: str) -> None:
        self.refused += 1
        logger.warning(
            "%s: refused a binding connection from %s on the %s port: %s",
            self.instance,
            transport.get_extra_info("peername"),
            port,
            reason,
        )
        assert isinstance(transport, asyncio.WriteTransport)
        transport.abort()

    def _receive_connected(self, receiver: Receiver) -> None:
        transport = receiver.transport
        assert transport is not None
        if self.attached is not None and not self.attached.closed.is_set():
            self._refuse(
                transport, "receive", f"a binding is already attached ({self.attached.peer})"
            )
            return
        if self._pending is not None or not self._ready.empty():
            self._refuse(transport, "receive", "another binding is attaching")
            return
        self._pending = receiver
        self._pending_timer = asyncio.get_running_loop().call_later(
            self.attach_timeout_s, self._attach_timed_out
        )

    async def _send_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self.attached is not None and not self.attached.closed.is_set():
            self._refuse(
                writer.transport, "send", f"a binding is already attached ({self.attached.peer})"
            )
            return
        pending = self._pending
        if pending is None:
            self._refuse(writer.transport, "send", "connect to the receive port first")
            return
        self._pending = None
        if self._pending_timer is not None:
            self._pending_timer.cancel()
        attachment = Attachment(pending, writer)
        self.attached = attachment
        logger.info("%s: binding attached from %s", self.instance, attachment.peer)
        self._ready.put_nowait(attachment)

    def _attach_timed_out(self) -> None:
        if self._pending is not None and self._pending.transport is not None:
            self._refuse(
                self._pending.transport,
                "receive",
                f"no connection to the send port within {self.attach_timeout_s} s",
            )
            self._pending = None

    def _drop_pending(self) -> None:
        if self._pending is not None:
            self._pending.abort()
            self._pending = None


class SocketBinding:
    """A binding process behind ``BindingPorts``, as the runtime drives it."""

    def __init__(
        self,
        host: BindingHost,
        ports: BindingPorts,
        *,
        on_lost: Callable[[str], None],
        message_bytes_max: int,
        checkpoint_bytes_max: int = CHECKPOINT_BYTES_MAX,
        send_buffer_bytes_max: int = 16 * 1024 * 1024,
    ) -> None:
        self.host = host
        self.instance = host.instance
        self.ports = ports
        self._on_lost = on_lost
        self._message_bytes_max = message_bytes_max
        self._checkpoint_bytes_max = checkpoint_bytes_max
        self._send_buffer_bytes_max = send_buffer_bytes_max
        self.replaying = False
        self.is_primary = False
        self.checkpoint_requested = False
        self._started = False
        self._loaded: bytes | None = None
        self._initial: bytes | None = None
        self._primary_told = False
        self._attachment: Attachment | None = None
        self._end: CoordinatorEnd | None = None
        self._attached = asyncio.Event()
        self._reader_task: asyncio.Task[None] | None = None
        self._attach_task: asyncio.Task[None] | None = None
        self._answer: asyncio.Future[bytes | None] | None = None
        self._initial_answer: asyncio.Future[bytes] | None = None
        self._resume_reading = asyncio.Event()
        self._resume_reading.set()
        self._streams: dict[str, OutputStream] = {}
        self._blocked: set[OutputStream] = set()
        self._unblocked = asyncio.Event()
        self._unblocked.set()
        self._current_is_result = False
        self._early_impulses: list[bytes] = []
        self._at_primary: BindingState | None = None
        self.lost_reason: str | None = None
        self._closed = False

    # -- Binding ------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._started

    @property
    def checkpoint_when_primary(self) -> bool:
        # After a recovery the binding answered TakeBecomingPrimaryCheckpoint at the end
        # of replay (``end_replay``): that answer is the checkpoint at becoming primary.
        # After a first start, the checkpoint waits for the first start's page, as
        # in-process.
        return self._at_primary is not None

    @property
    def quiescent(self) -> bool:
        return True  # the binding process decides: it answers "not now" when it is not

    async def load_checkpoint(self, binding: Mapping[str, Any], state: bytes) -> None:
        # Sent when a binding attaches (``_attach``): the runtime goes on recovering and
        # serving its peers meanwhile.
        self._started = bool(binding.get("started", False))
        self._loaded = state
        self._ensure_attaching()

    async def initial_checkpoint(self) -> BindingState:
        await self._wait_attached()
        loop = asyncio.get_running_loop()
        self._initial_answer = loop.create_future()
        self._primary_told = True
        self._write(self._end_or_fail().control_record(_TAKE_BECOMING_PRIMARY_CHECKPOINT))
        data = await self._initial_answer
        self._initial_answer = None
        return self._state(data)

    def running_call(self) -> object | None:
        return None  # the handlers run in the binding process

    def describe_call(self, call: object) -> str:
        return str(call)

    async def end_replay(self) -> None:
        """Tell the binding it is primary; its answer comes after every output it
        regenerated in replay, so the runtime's resume checks see all of them."""
        if self._primary_told:
            return
        self._at_primary = await self.take_checkpoint()

    async def take_checkpoint(self) -> BindingState | None:
        taken, self._at_primary = self._at_primary, None
        if taken is not None:
            return taken
        await self._wait_attached()
        end = self._end_or_fail()
        asked = _TAKE_CHECKPOINT
        if not self._primary_told:
            asked = _TAKE_BECOMING_PRIMARY_CHECKPOINT
            self._primary_told = True
        self._answer = asyncio.get_running_loop().create_future()
        self._write(end.control_record(asked))
        try:
            data = await self._answer
        finally:
            self._answer = None
            # The reader stopped after the answer: the runtime snapshots the output
            # streams in this same turn of the loop, before the reader goes on.
            asyncio.get_running_loop().call_soon(self._resume_reading.set)
        return None if data is None else self._state(data)

    def _state(self, data: bytes) -> BindingState:
        return {"started": self._started, "separate": True}, data

    async def deliver(self, page: Page) -> None:
        self._at_primary = None  # no longer this page boundary's state
        await self._wait_attached()
        if not self._started:
            self._note_start(page)
        attachment = self._attachment
        assert attachment is not None and self._end is not None
        for part in self._end.page_record_parts(page):
            self._write(part)
        transport = attachment.writer.transport
        if transport.get_write_buffer_size() > self._send_buffer_bytes_max:
            with contextlib.suppress(ConnectionError):
                await attachment.writer.drain()

    def _note_start(self, page: Page) -> None:
        for group in page.groups:
            if group.source != self.instance:
                continue
            data = group.messages
            # The size prefix of the first message, then its type byte.
            start = 1 if data[0] < 0x80 else 2 if data[1] < 0x80 else 3
            if data[start] == _TYPE_INITIAL_MESSAGE:
                self._started = True

    def first_start_message(self) -> bytes | None:
        return self._initial

    async def become_primary(self) -> None:
        early, self._early_impulses = self._early_impulses, []
        for message in early:
            self.host.log_impulse(message)

    def blocked_on(self, stream: OutputStream) -> bool:
        return stream in self._blocked

    def stream_blocked(self, stream: OutputStream) -> bool:
        if self.replaying or self._current_is_result:
            stream.report_again()
            return False
        self._blocked.add(stream)
        self._unblocked.clear()
        return True

    def stream_unblocked(self, stream: OutputStream) -> None:
        self._blocked.discard(stream)
        if not self._blocked:
            self._unblocked.set()

    def close(self) -> None:
        self._closed = True
        for task in (self._reader_task, self._attach_task):
            if task is not None:
                task.cancel()
        if self._attachment is not None:
            self.ports.detach(self._attachment)

    # -- attaching -------------------------------------------------------------------------

    def _ensure_attaching(self) -> None:
        if self._attach_task is None:
            self._attach_task = asyncio.get_running_loop().create_task(self._attach())

    async def _wait_attached(self) -> None:
        self._ensure_attaching()
        await self._attached.wait()

    async def _attach(self) -> None:
        attachment = await self.ports.next_attachment()
        self._attachment = attachment
        # ``drain`` waits down to the low mark; asyncio's default (16 KiB) would empty the
        # buffer before the next page goes out. With these, a page can follow the one
        # being read (one paired run showed no clear change at 64 KiB: noise dominated).
        attachment.writer.transport.set_write_buffer_limits(
            high=self._send_buffer_bytes_max, low=self._send_buffer_bytes_max // 2
        )
        self._end = CoordinatorEnd(
            committer_id=self.host.instance_id,
            message_bytes_max=self._message_bytes_max,
            checkpoint_bytes_max=self._checkpoint_bytes_max,
        )
        if self._loaded is not None:
            # Recovery: the checkpoint first, then the replayed pages.
            self._write(self._end.checkpoint_record(len(self._loaded)))
            self._write(self._loaded)
            self._loaded = None
        self._reader_task = asyncio.get_running_loop().create_task(self._read(attachment))
        self._attached.set()

    def _end_or_fail(self) -> CoordinatorEnd:
        assert self._end is not None
        return self._end

    def _write(self, data: bytes | memoryview) -> None:
        attachment = self._attachment
        if attachment is not None and not attachment.closed.is_set():
            attachment.writer.write(data)

    # -- reading ---------------------------------------------------------------------------

    async def _read(self, attachment: Attachment) -> None:
        end = self._end
        assert end is not None
        receiver = attachment.receiver
        receiver.install(end)
        try:
            while True:
                events = await receiver.events()
                if events is None:
                    end.receive_eof()
                    self._lose("the binding disconnected")
                    return
                for event in events:
                    await self._handle(event)
        except BindingProtocolError as error:
            self._lose(str(error))
        except ConnectionError as error:
            self._lose(f"connection failed: {error}")
        except AmbrosiaError as error:
            self._lose(f"its input cannot be taken: {error}")

    async def _handle(self, event: CoordinatorEvent) -> None:
        kind = type(event)
        if kind is RpcReceived:
            assert isinstance(event, RpcReceived)
            self._route(event)
            if self._blocked:
                await self._unblocked.wait()
        elif kind is CheckpointReceived:
            assert isinstance(event, CheckpointReceived)
            self._checkpoint_received(event.data)
            await self._resume_reading.wait()
        elif kind is CheckpointAsked:
            if self._answer is not None and not self._answer.done():
                self._resume_reading.clear()
                self._answer.set_result(None)  # "not now": asked again after a later page
                await self._resume_reading.wait()
            else:
                self.host.request_checkpoint()
        elif kind is InitialReceived:
            assert isinstance(event, InitialReceived)
            self._initial_received(event.message)
        elif kind is AttachRequested:
            assert isinstance(event, AttachRequested)
            self._stream(event.destination)
        elif kind is PingReceived:
            assert isinstance(event, PingReceived) and self._end is not None
            self._write(self._end.control_record(encode(PingReturn(event.data))))

    def _route(self, event: RpcReceived) -> None:
        if event.kind == KIND_IMPULSE:
            if not self._primary_told:
                raise BindingProtocolError(
                    "binding protocol: an impulse before the binding was told it is primary"
                )
            if not self.is_primary:
                # Told on a first start, while this coordinator still writes checkpoint
                # 0: logged once it is primary (``become_primary``).
                if len(self._early_impulses) >= _EARLY_IMPULSES_MAX:
                    raise BindingProtocolError(
                        f"binding protocol: more than {_EARLY_IMPULSES_MAX} impulses before "
                        "the first start finished"
                    )
                self._early_impulses.append(event.message)
                return
            self.host.log_impulse(event.message)
            return
        stream = self._stream(event.destination)
        message = event.message
        _, start = decode_zigzag_int(message, 0)
        self._current_is_result = message[start + 1] == RESERVED_RESULT  # after type 0
        count = event.count
        if count == 1:
            stream.add(message, b"")
        elif stream.next_seq >= stream.drop_through and stream.on_drop is None:
            stream.add_run(message, count)
        else:
            # Replay: some of these may be consumed already; the stream drops them one
            # by one (and the self-stream checks each against the log).
            size = len(message) // count
            for at in range(0, len(message), size):
                stream.add(message[at : at + size], b"")

    def _stream(self, destination: str) -> OutputStream:
        stream = self._streams.get(destination)
        if stream is None:
            if destination:
                try:
                    validate_instance_name(destination)
                except ConfigError as error:
                    raise BindingProtocolError(f"binding protocol: {error}") from error
            stream = self.host.open_stream(destination or self.instance)
            self._streams[destination] = stream
        return stream

    def _checkpoint_received(self, data: bytes) -> None:
        if self._initial_answer is not None and not self._initial_answer.done():
            self._initial_answer.set_result(data)
            return
        if self._answer is not None and not self._answer.done():
            self._resume_reading.clear()
            self._answer.set_result(data)
            return
        raise BindingProtocolError("binding protocol: a Checkpoint that was not asked for")

    def _initial_received(self, message: bytes) -> None:
        if self._initial is not None or self._started:
            logger.warning("%s: a second InitialMessage from the binding ignored", self.instance)
            return
        self._initial = message
        if self.is_primary and self._initial_answer is None:
            # Recovery of a life that never logged it: the runtime asked already.
            self.host.open_stream(self.instance).add(message, b"")

    def _lose(self, reason: str) -> None:
        if self.lost_reason is not None or self._closed:
            return
        self.lost_reason = reason
        logger.error("%s: binding lost: %s", self.instance, reason)
        if self._attachment is not None:
            self.ports.detach(self._attachment)
        self._on_lost(reason)
