"""Coordinator-to-coordinator links over TCP.

Each ordered pair (sender, receiver) has its own connection, dialled by the sender. Data
flows sender -> receiver; the receiver's control messages (ReplayFrom, Commit) flow back on
the same socket. Because the sender always reads its control direction and never waits
on anything to do so, acknowledgements can never be stuck behind full data buffers: the
property the original got from a separate control connection. Data in the other direction
uses the other pair's connection.

Handshake: the sender sends Hello(sender, receiver, epoch); the receiver answers
ReplayFrom(total, replayable): the last message it has accepted into its log pipeline
(durable or in the page being written, since both will be durable unless the receiver
dies, and if it dies it recovers to exactly what was durable). The sender drops
everything up to there and sends from the next message. Data travels as DataBatch frames
(first_seq, count, replayable count, packed messages); the receiver checks first_seq is
the next it expects (anything else is a protocol error: close) and copies the payload
into the current page without parsing it (``protocol/inputs`` keeps the marks and makes
the sequence check, ``protocol/batch`` checks the messages). After the page is durable
the receiver sends Commit(last seq) and the sender frees its buffer.

Any protocol error from a peer (oversize frame, garbage, unknown type, wrong sequence)
closes that one connection with a logged reason; the coordinator keeps serving others.

Transport security (``ambrosia.coordinator.tls``): with TLS on, the listener is an asyncio
TLS server (the handshake, with its deadline, finishes before ``IncomingLink`` sees the
connection, which then records the instance the client's certificate names as
``peer_identity``). The dialling side keeps its own socket and runs TLS in memory: an
``ssl.SSLObject`` between two ``MemoryBIO``s encrypts what ``send`` is given and decrypts
what the socket delivers, so ciphertext takes exactly the queue, back-pressure and
``sendmsg`` path that plaintext takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import random
import socket
import ssl
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

from ambrosia.coordinator.tls import client_handshake, instance_named_by
from ambrosia.errors import (
    AmbrosiaError,
    ConfigError,
    FrameTooLargeError,
    PeerIdentityError,
    ProtocolError,
)
from ambrosia.protocol.batch import check_batch
from ambrosia.protocol.inputs import InputMarks
from ambrosia.protocol.outputs import OutputStream, Segment
from ambrosia.wire.messages import (
    PEER_PROTOCOL_VERSION,
    TYPE_DATA_BATCH,
    Commit,
    DataBatch,
    Direction,
    Hello,
    InputHeld,
    Ping,
    ReplayFrom,
    decode_message_body,
    encode,
    encode_data_batch_head,
)
from ambrosia.wire.varint import Incomplete, decode_zigzag_int

logger = logging.getLogger("ambrosia.links")

# What a sender writes when it has sent nothing for a while: an empty Ping, which the
# receiver takes as a sign of life (its idle deadline closes silent connections).
KEEPALIVE = encode(Ping(b""))
_C2C = Direction.COORDINATOR_TO_COORDINATOR
# Buffers per sendmsg call (well under the kernel's IOV_MAX of 1024).
_SENDMSG_BUFFERS_MAX = 64
# SO_LINGER on with a zero timeout: close() resets the connection (tests simulate aborts).
_LINGER_RESET = struct.pack("ii", 1, 0)
# Below this many plaintext bytes, one send's buffers are joined into one TLS record:
# a record costs a header, a tag and a cipher call, more than copying a small head does.
# Larger payloads are written buffer by buffer (each becomes records of up to 16 KiB).
_TLS_JOIN_BYTES_MAX = 16 * 1024
# Ciphertext read from the socket per call on the dialling side (control messages only).
_TLS_READ_BYTES = 1 << 16


def data_batch_head(segment: Segment) -> bytes:
    """Size prefix and fields of a DataBatch frame; the segment's bytes follow as is.

    Every message a stream carries is replayable: impulses never cross a link here (they
    are logged by the immortal that receives them from the outside world).
    """
    return encode_data_batch_head(
        segment.first_seq, segment.count, segment.count, len(segment.data)
    )


# A reader receiving large frames grows to hold this many of them, up to the bound below.
_FRAMES_PER_BUFFER = 8
_GROWN_BYTES_MAX = 8 * 1024 * 1024


class FrameReader:
    """Splits a byte stream into message bodies, reading into one reusable buffer.

    The socket reads straight into the free space at the end of the buffer. When the
    free space runs low, the consumed bytes are reclaimed by moving the unread tail (the
    start of a frame still arriving) to the front, but only when that moves no more
    than it reclaims; otherwise the buffer grows. A stream of large frames (data batches
    of a megabyte) gets a buffer of ``_FRAMES_PER_BUFFER`` such frames, so the tail is
    moved once per few frames rather than once per frame: at 64 KiB messages that move
    was a fifth of the receiving loop's time. Never beyond ``frame_bytes_max`` (plus its
    size prefix) for one frame, nor ``_GROWN_BYTES_MAX`` for several.

    It starts at ``buffer_bytes`` (64 KiB: an idle or handshaking connection costs that
    much, not a frame limit's worth) and ``shrink`` gives a grown buffer back once it
    holds no unread byte (the owner calls it when the connection goes quiet).

    Views handed out (``memoryview`` of type byte + data) are only valid until the next
    ``get_buffer``; callers copy what they keep.
    """

    def __init__(self, frame_bytes_max: int, buffer_bytes: int = 64 * 1024) -> None:
        self.frame_bytes_max = frame_bytes_max
        self.buffer_bytes_min = buffer_bytes
        self.buffer = bytearray(buffer_bytes)
        self.read_bytes_min = min(64 * 1024, buffer_bytes // 4)
        self.start = 0
        self.end = 0
        self.frame_bytes_pending = 0  # size of the incomplete frame at ``start``, if known

    def get_buffer(self) -> memoryview:
        if len(self.buffer) - self.end < self.read_bytes_min:
            unread = self.end - self.start
            needed = max(self.frame_bytes_pending, unread + self.read_bytes_min)
            pending = self.frame_bytes_pending
            if pending > self.buffer_bytes_min:
                # Large frames arriving: room for a few of them, within the bound (grown
                # to hold eight, kept while it holds seven: sizes vary a little).
                enough = max(needed, min(pending * (_FRAMES_PER_BUFFER - 1), _GROWN_BYTES_MAX))
                size = max(needed, min(pending * _FRAMES_PER_BUFFER, _GROWN_BYTES_MAX))
            else:
                # One frame larger than the buffer: grow to hold it (bounded by the limit).
                enough = needed
                size = min(max(len(self.buffer) * 2, needed), self.frame_bytes_max + 16)
            if len(self.buffer) >= enough:
                self.compact()
            else:
                bigger = bytearray(size)
                bigger[:unread] = self.buffer[self.start : self.end]
                self.buffer = bigger
                self.start = 0
                self.end = unread
        return memoryview(self.buffer)[self.end :]

    @property
    def has_partial_frame(self) -> bool:
        return self.end > self.start

    def shrink(self) -> None:
        """Back to the starting size if nothing unread is held (views must be gone)."""
        if self.start == self.end and len(self.buffer) > self.buffer_bytes_min:
            self.buffer = bytearray(self.buffer_bytes_min)
            self.start = self.end = 0
            self.frame_bytes_pending = 0

    def compact(self) -> None:
        if self.start:
            remaining = self.end - self.start
            self.buffer[:remaining] = self.buffer[self.start : self.end]
            self.start = 0
            self.end = remaining

    def next_frame(self) -> memoryview | None:
        """The next complete message body (type + data), or None if more bytes are needed."""
        with memoryview(self.buffer) as whole:
            try:
                size, body_start = decode_zigzag_int(whole[: self.end], self.start)
            except Incomplete:
                return None
        if size <= 0:
            raise ProtocolError(f"frame size {size} is not positive")
        if size > self.frame_bytes_max:
            raise FrameTooLargeError(size, self.frame_bytes_max)
        body_end = body_start + size
        if body_end > self.end:
            self.frame_bytes_pending = body_end - self.start
            return None
        self.frame_bytes_pending = 0
        self.start = body_end
        # Read-only, so decoded payloads are zero-copy slices of the buffer.
        return memoryview(self.buffer).toreadonly()[body_start:body_end]


async def _connect(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket to the first address of ``host`` that answers."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"no address for {host}:{port}")
    last_error: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except OSError as error:
            sock.close()
            last_error = error
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    assert last_error is not None
    raise last_error


def _decode(body: memoryview) -> Any:
    return decode_message_body(body, _C2C)


# -- receiver side ------------------------------------------------------------------------


class IncomingLink(asyncio.BufferedProtocol):
    """The receiving end of one sender's connection."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner  # the Runtime: accept_hello, try_accept, wait_for_room, closed
        self.reader = FrameReader(owner.config.frame_bytes_max)
        self.transport: asyncio.Transport | None = None
        self.source: str | None = None
        # The instance the peer's verified TLS certificate names; None over plain TCP.
        self.peer_identity: str | None = None
        # The receiver's input marks (``protocol/inputs``), from admission on.
        self.inputs: InputMarks | None = None
        self.paused = False
        self.closed = False
        self.admitting = False  # a Hello is being checked: read nothing more until then
        self.held = False  # the output stream to this peer is over its bound
        self.frames_received = 0  # progress, for the deadlines (``Runtime._sweep``)
        self.bytes_received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (a stream protocol gets no other), though not necessarily an
        # instance of asyncio.Transport: uvloop's are not.
        self.transport = cast(asyncio.Transport, transport)
        self.owner.incoming_opened(self)  # counts it; refuses one over the limit
        if self.closed:
            return
        if transport.get_extra_info("sslcontext") is None:
            return  # plain TCP: no identity; admission decides whether that is allowed
        # The handshake is complete and the chain verified against the deployment CA.
        self.peer_identity = instance_named_by(transport.get_extra_info("peercert"))
        if self.peer_identity is None:
            self.fail("its TLS certificate names no instance (no single ambrosia:instance: URI)")

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.reader.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.reader.end += nbytes
        self.bytes_received += nbytes
        self._process()

    @property
    def admitted(self) -> bool:
        return self.source is not None

    def _process(self) -> None:
        if self.closed:
            return
        try:
            while not (self.paused or self.held or self.admitting):
                frame_start = self.reader.start
                body = self.reader.next_frame()
                if body is None:
                    break
                self.frames_received += 1
                if body[0] == TYPE_DATA_BATCH and self.source is not None:
                    if not self._data(body):
                        # Re-read this frame once the page has room.
                        del body
                        self.reader.start = frame_start
                        self._pause()
                        break
                else:
                    self._control(_decode(body))
                del body
        except ProtocolError as error:
            self.fail(f"protocol error: {error}")
        except AmbrosiaError as error:
            self.fail(f"cannot accept input: {error}")
        except Exception as error:
            # Whatever a peer sends must end here, not as asyncio's "Fatal error" in the
            # transport; a non-protocol exception means a check above is missing.
            self.fail(f"refused input ({type(error).__name__}: {error})")

    def _data(self, body: memoryview) -> bool:
        batch = _decode(body)
        assert isinstance(batch, DataBatch)
        source = self.source
        assert source is not None and self.inputs is not None
        # Before anything is logged: a logged batch cannot be taken back. The messages
        # first (their count among them), then where they stand in the sender's sequence
        # (``InputSequenceError``).
        check_batch(batch.payload, batch.count, batch.replayable_count)
        self.inputs.expect(source, batch.first_seq, batch.count)
        taken: bool = self.owner.try_accept(
            source, batch.first_seq, batch.count, batch.replayable_count, batch.payload
        )
        return taken

    def _control(self, message: object) -> None:
        if isinstance(message, Ping) and self.source is not None:
            return  # a sender's keepalive: its arrival is all that counts
        if isinstance(message, Hello) and self.source is None and not self.admitting:
            # Admission looks the sender up in the catalog: read nothing more until then.
            self.admitting = True
            if self.transport is not None:
                self.transport.pause_reading()
            self.owner.accept_hello(self, message)
            return
        raise ProtocolError(f"unexpected {type(message).__name__} from {self.source or 'peer'}")

    def admit(self, source: str, inputs: InputMarks) -> None:
        """The Hello passed: resume after the last call logged from ``source``, with the
        CRC-32 of the calls up to it (``InputMarks.resume_point``); every batch after
        is checked against ``inputs``, which the log's acceptance moves on."""
        if self.closed:
            return
        self.source = source
        self.inputs = inputs
        self.admitting = False
        accepted, digest = inputs.resume_point(source)
        self.send(ReplayFrom(accepted, accepted, digest))
        self._resume_reading()

    def hold(self, held: bool) -> None:
        """Stop (or restart) taking input: the output stream to this peer is over its
        bound, so the peer gets back-pressure instead of more results piling up. The
        peer is told (InputHeld), so that it can tell this pause from silence."""
        if held == self.held or self.closed:
            return
        self.held = held
        if self.source is not None:
            self.send(InputHeld(held))
        if held:
            if self.transport is not None:
                self.transport.pause_reading()
        else:
            self._resume_reading()

    def _pause(self) -> None:
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()
        self.owner.wait_for_room(self._resume)

    def _resume(self) -> None:
        if self.closed:
            return
        self.paused = False
        self._resume_reading()

    def _resume_reading(self) -> None:
        if self.closed or self.paused or self.held or self.admitting:
            return
        if self.transport is not None:
            self.transport.resume_reading()
        self._process()

    @property
    def reading(self) -> bool:
        """False while input is held back on purpose (deadlines do not run then)."""
        return not (self.paused or self.held or self.admitting)

    def send(self, message: Commit | ReplayFrom | InputHeld) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(encode(message))

    def commit(self, seq: int) -> None:
        self.send(Commit(seq, seq))

    def fail(self, reason: str) -> None:
        if self.closed:
            return
        peer = self.source or self.peer_identity or "unknown peer"
        logger.warning("closing connection from %s: %s", peer, reason)
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.owner.incoming_closed(self)


# -- sender side --------------------------------------------------------------------------


class OutgoingConnection:
    """The sending end over a non-blocking socket: writes DataBatch frames, reads control.

    Not an asyncio transport on purpose. A transport copies every write into its own
    bytearray and, after each partial send, deletes the sent bytes from the front of it,
    which moves everything still buffered: at 64 KiB messages that copying cost more CPU
    than the rest of the sender. Here a batch is handed to the kernel with ``sendmsg``
    straight from the output stream's buffers (head and messages in one call, no join);
    what the socket does not take right away is queued as views of those same buffers
    (they are never modified once sealed) and sent when the socket is writable.

    ``writable`` goes False above ``write_buffer_bytes_max`` queued bytes and back to True
    below half of it, when the link is asked to flush again: the bound on what one
    connection holds beyond the kernel's socket buffer. Control messages (ReplayFrom,
    Commit) are read into a fixed buffer with ``recv_into``.

    With ``tls`` (a finished client handshake: see ``tls.client_handshake``), ``send``
    encrypts into the outgoing ``MemoryBIO`` and queues the ciphertext exactly as it
    would queue plaintext, so the bound above counts what waits for the socket either
    way; reads are decrypted straight into the frame reader's buffer.
    """

    def __init__(
        self, link: OutgoingLink, sock: socket.socket, tls: _TlsSession | None = None
    ) -> None:
        self.link = link
        self.sock = sock
        self.tls = tls
        self.fd = sock.fileno()
        self.loop = asyncio.get_running_loop()
        self.reader = FrameReader(1 << 16, 1 << 16)
        self.ready = False
        self.writable = True
        self.closed = False
        self.lost: asyncio.Future[None] = self.loop.create_future()
        self.write_buffer_bytes_max: int = link.config.socket_buffer_bytes
        self._queue: deque[memoryview] = deque()
        self._queued_bytes = 0
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.loop.add_reader(self.fd, self._on_readable)
        link.protocol = self
        # ``acked`` lets the receiver notice that its log lost calls it acknowledged.
        hello = Hello(
            PEER_PROTOCOL_VERSION,
            link.sender,
            link.stream.destination,
            link.epoch,
            link.stream.acked_through,
        )
        self.send(encode(hello))

    # -- writing -------------------------------------------------------------------------

    def send(self, *buffers: bytes | bytearray | memoryview) -> None:
        """Send these buffers in order after everything queued before them."""
        if self.closed:
            return
        if self.tls is not None:
            try:
                buffers = (self.tls.encrypt(buffers),)
            except ssl.SSLError as error:
                self.close(error)
                return
        self._send_raw(buffers)

    def _send_raw(self, buffers: tuple[bytes | bytearray | memoryview, ...]) -> None:
        if not self._queue:
            try:
                sent = self.sock.sendmsg(buffers)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as error:
                self.close(error)
                return
            views = _unsent_views(buffers, sent)
            if not views:
                return
            self.loop.add_writer(self.fd, self._on_writable)
        else:
            views = [memoryview(buffer) for buffer in buffers]
        for view in views:
            self._queue.append(view)
            self._queued_bytes += len(view)
        if self._queued_bytes > self.write_buffer_bytes_max:
            self.writable = False

    def _on_writable(self) -> None:
        queue = self._queue
        try:
            sent = self.sock.sendmsg(list(itertools.islice(queue, _SENDMSG_BUFFERS_MAX)))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self.close(error)
            return
        self._queued_bytes -= sent
        while sent:
            view = queue[0]
            if len(view) <= sent:
                sent -= len(view)
                queue.popleft()
            else:
                queue[0] = view[sent:]
                sent = 0
        if not queue:
            self.loop.remove_writer(self.fd)
        if not self.writable and self._queued_bytes <= self.write_buffer_bytes_max // 2:
            self.writable = True
            self.link.flush()

    # -- reading -------------------------------------------------------------------------

    def _on_readable(self) -> None:
        if self.tls is not None:
            self._on_readable_tls(self.tls)
            return
        reader = self.reader
        try:
            received = self.sock.recv_into(reader.get_buffer())
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self.close(error)
            return
        if received == 0:
            self.close(None)
            return
        reader.end += received
        self._read_frames()

    def _on_readable_tls(self, tls: _TlsSession) -> None:
        try:
            ciphertext = self.sock.recv(_TLS_READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self.close(error)
            return
        if not ciphertext:
            self.close(None)
            return
        tls.incoming.write(ciphertext)
        reader = self.reader
        while not self.closed:
            try:
                buffer = reader.get_buffer()
                # With a buffer, read() returns a count (typeshed says bytes).
                received: int = tls.session.read(len(buffer), buffer)  # type: ignore[assignment]
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.close(None)  # the peer's close_notify: an orderly end
                return
            except ssl.SSLError as error:
                # The server refused our certificate (an alert), or the stream is damaged.
                logger.warning(
                    "closing link to %s: TLS error: %s", self.link.stream.destination, error
                )
                self.close(error)
                return
            if received == 0:
                self.close(None)  # close_notify: read() returns 0 rather than raising
                return
            reader.end += received
            self._read_frames()
        if tls.outgoing.pending and not self.closed:
            # Post-handshake messages the session answers (a key update, for one).
            self._send_raw((tls.outgoing.read(),))

    def _read_frames(self) -> None:
        reader = self.reader
        try:
            while (body := reader.next_frame()) is not None:
                message = _decode(body)
                del body
                self._control(message)
        except ProtocolError as error:
            logger.warning("closing link to %s: %s", self.link.stream.destination, error)
            self.close(None)

    def _control(self, message: object) -> None:
        stream = self.link.stream
        if isinstance(message, ReplayFrom) and not self.ready:
            stream.rewind(message.total, message.digest)
            self.ready = True
            self.link.resumed(message.total)
            self.link.flush()
        elif isinstance(message, Commit) and self.ready:
            # Never beyond what was sent (``next_seq``), or than the receiver's own resume
            # point (during replay ``next_seq`` lags behind what it already holds).
            if message.seq > max(stream.next_seq, stream.drop_through):
                raise ProtocolError(
                    f"{stream.destination} acknowledged {message.seq}, "
                    f"only {stream.next_seq} were sent"
                )
            self.link.acked(message.seq)
        elif isinstance(message, InputHeld) and self.ready:
            self.link.peer_held(message.held)
        else:
            raise ProtocolError(f"unexpected {type(message).__name__} from {stream.destination}")

    # -- closing -------------------------------------------------------------------------

    def close(self, error: BaseException | None = None, *, abort: bool = False) -> None:
        """Close the socket (``abort``: reset it, dropping unsent bytes); idempotent."""
        if self.closed:
            return
        self.closed = True
        self.ready = False
        if error is not None:
            logger.debug("link to %s failed: %s", self.link.stream.destination, error)
        self.loop.remove_reader(self.fd)
        self.loop.remove_writer(self.fd)
        self._queue.clear()
        if abort:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self.sock.close()
        if not self.lost.done():
            self.lost.set_result(None)


class _TlsSession:
    """A client TLS session over memory buffers: what ``OutgoingConnection`` needs of it."""

    __slots__ = ("incoming", "outgoing", "session")

    def __init__(
        self, session: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
    ) -> None:
        self.session = session
        self.incoming = incoming
        self.outgoing = outgoing

    def encrypt(self, buffers: tuple[bytes | bytearray | memoryview, ...]) -> bytes:
        """The ciphertext of ``buffers``, in order."""
        if len(buffers) > 1 and sum(len(buffer) for buffer in buffers) <= _TLS_JOIN_BYTES_MAX:
            buffers = (b"".join(buffers),)
        for buffer in buffers:
            self.session.write(buffer)
        return self.outgoing.read()


def _unsent_views(
    buffers: tuple[bytes | bytearray | memoryview, ...], sent: int
) -> list[memoryview]:
    """What is left of ``buffers`` after the first ``sent`` bytes went out."""
    views = []
    for buffer in buffers:
        size = len(buffer)
        if sent >= size:
            sent -= size
            continue
        views.append(memoryview(buffer)[sent:])
        sent = 0
    return views


class OutgoingLink:
    """Keeps one destination connected: dial, handshake, send, reconnect with backoff."""

    def __init__(
        self,
        *,
        sender: str,
        epoch: int,
        stream: OutputStream,
        config: Any,
        resolve: Callable[[str], Awaitable[tuple[str, int]]],
        on_ack: Callable[[OutputStream], None],
        tls: ssl.SSLContext | None = None,
        on_resume: Callable[[OutputStream, int], None] | None = None,
        on_peer_held: Callable[[OutputStream, bool], None] | None = None,
    ) -> None:
        self.sender = sender
        self.tls = tls
        self.epoch = epoch
        self.stream = stream
        self.config = config
        self._resolve = resolve
        self._on_ack = on_ack
        self._on_resume = on_resume
        self._on_peer_held = on_peer_held
        self.peer_holding = False  # the receiver said it holds our input (InputHeld)
        self.protocol: OutgoingConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self.closing = False  # set by close(): the dial loop ends even if a cancel was lost
        self.batches_sent = 0
        self.bytes_sent = 0  # payload bytes of the batches sent (ambrosia.coordinator.metrics)
        self.reconnects = 0
        self._last_refusal: str | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    def acked(self, seq: int) -> None:
        self.stream.ack(seq)
        self._on_ack(self.stream)

    def resumed(self, total: int) -> None:
        """The receiver named its resume point (its log holds everything up to ``total``)."""
        if self._on_resume is not None:
            self._on_resume(self.stream, total)

    def peer_held(self, held: bool) -> None:
        """The receiver holds (or reads again) our input: its output to us is over its
        bound. Until the connection drops (then: not holding, as nothing is known)."""
        if held != self.peer_holding:
            self.peer_holding = held
            if self._on_peer_held is not None:
                self._on_peer_held(self.stream, held)

    def flush(self) -> None:
        connection = self.protocol
        if connection is None or not connection.ready:
            return
        # Only while the connection takes more: what stays unsent waits in the stream,
        # where an acknowledgement can still free it, and goes out on the next flush
        # (the connection's own, once its buffer drains).
        self.stream.hand_out(functools.partial(self._send_batch, connection))

    def _send_batch(self, connection: OutgoingConnection, segment: Segment) -> bool:
        if not connection.writable:
            return False
        connection.send(data_batch_head(segment), segment.data)
        self.batches_sent += 1
        self.bytes_sent += len(segment.data)
        return True

    async def _run(self) -> None:
        delay = self.config.reconnect_delay_min_s
        loop = asyncio.get_running_loop()
        destination = self.stream.destination
        while not self.closing:
            try:
                host, port = await self._resolve(destination)
                sock, tls = await asyncio.wait_for(
                    self._dial(loop, host, port), self.config.connect_timeout_s
                )
                if self.closing:
                    # On Python 3.11 ``wait_for`` can swallow the cancel of ``close`` when
                    # the dial completes in the same turn: the link must still end here
                    # rather than wait on a connection nobody will ever close.
                    sock.close()
                    return
                connection = OutgoingConnection(self, sock, tls)
                delay = self.config.reconnect_delay_min_s
                self._last_refusal = None
                await self._until_lost_or_moved(connection, (host, port))
                self.reconnects += 1
                logger.info("link to %s dropped; reconnecting", destination)
            except (PeerIdentityError, ssl.SSLCertVerificationError, ConfigError) as error:
                # Not a network blip: a wrong certificate or setting. Loud, but once per
                # distinct reason, not on every retry.
                if str(error) != self._last_refusal:
                    self._last_refusal = str(error)
                    logger.warning("link to %s refused: %s", destination, error)
            except (TimeoutError, OSError, AmbrosiaError) as error:
                logger.debug("cannot reach %s: %s", destination, error)
            except Exception:
                # A resolver or protocol bug must not end the link for good: keep trying.
                logger.exception("link to %s failed; retrying", destination)
            finally:
                if self.protocol is not None:
                    self.protocol.close()
                self.protocol = None
                self.peer_held(False)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.config.reconnect_delay_max_s)

    async def _until_lost_or_moved(
        self, connection: OutgoingConnection, address: tuple[str, int]
    ) -> None:
        """Wait for the connection to drop; drop it when the destination moved.

        A standby that took over from a primary that is only paused (whose connections
        stay open, silent) may listen at another address and publish it; the address
        is looked up again every ``peer_address_check_s``, and a change ends this
        connection so the loop dials the new one.
        """
        interval_s = getattr(self.config, "peer_address_check_s", 0.0)
        if interval_s <= 0:
            await connection.lost
            return
        lost = connection.lost
        while True:
            # ``asyncio.wait``, not ``wait_for`` on a shield: it never cancels what it
            # waits for and never swallows a cancel of this task (Python 3.11's
            # ``wait_for`` returns the result when both come in the same turn).
            done, _ = await asyncio.wait({lost}, timeout=interval_s)
            if done or self.closing:
                return
            try:
                now = await asyncio.wait_for(
                    self._resolve(self.stream.destination), self.config.connect_timeout_s
                )
            except (TimeoutError, OSError, AmbrosiaError):
                continue  # the catalog may answer next time; the connection still works
            if now != address:
                logger.info(
                    "%s moved from %s:%d to %s:%d; reconnecting",
                    self.stream.destination,
                    *address,
                    *now,
                )
                connection.close()
                await connection.lost
                return

    async def _dial(
        self, loop: asyncio.AbstractEventLoop, host: str, port: int
    ) -> tuple[socket.socket, _TlsSession | None]:
        """Connect, and with TLS on, finish the handshake and check the server's identity."""
        sock = await _connect(loop, host, port)
        if self.tls is None:
            return sock, None
        try:
            session, incoming, outgoing = await client_handshake(
                sock, self.tls, self.stream.destination
            )
        except BaseException:
            sock.close()
            raise
        return sock, _TlsSession(session, incoming, outgoing)

    def close(self) -> None:
        self.closing = True
        if self.task is not None:
            self.task.cancel()
        if self.protocol is not None:
            self.protocol.close()
