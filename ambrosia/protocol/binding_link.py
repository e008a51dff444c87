"""The binding protocol at both ends, without IO (PROTOCOL.md, docs/bindings.md).

Bytes go in, events come out; records and messages to send come out as bytes. No
socket, no event loop: ``ambrosia.coordinator.socket_binding`` (the coordinator's end)
and ``ambrosia.binding.remote`` (the Python binding process) are thin shells around
:class:`CoordinatorEnd` and :class:`BindingEnd`.

Binding -> coordinator: a stream of messages (``size: ZigZagInt``, type, data). The
coordinator accepts the types of the original's coordinator, 0, 1, 2, 5, 6, 7, 8 and 9,
and nothing else: type 13 (CountReplayableRPCBatch) and the coordinator-only types are
refused like an unknown type. A Checkpoint (8) announces its length as a ZigZagLong and
the raw bytes follow outside the message; they are gathered here, bounded by
``checkpoint_bytes_max`` (checked when the length is announced, before any byte of it
is buffered). The InitialMessage (9) is opaque: it is logged as sent, type byte and all.

Coordinator -> binding: a stream of log records (24-byte header, messages back to back;
``ambrosia.wire.frames`` documents the header and its check bytes):

- a durable log page: sequence id = the page's sequence number; for each input group of
  the page, a *source marker* and then the group's messages exactly as logged. The
  marker is an incoming RPC with the system method id ``METHOD_ID_SOURCE`` (-2), kind
  fork, whose arguments are the group's byte length (ZigZagLong) and the sender's
  instance name (UTF-8, to the end): the binding needs the sender to route results, and
  the length lets it take the group as one slice instead of walking it message by
  message. Impulses come from ``@impulses``; the application's own calls (and its
  InitialMessage) from its own name;
- a record the coordinator made up (sequence id -1): TakeCheckpoint (2),
  TakeBecomingPrimaryCheckpoint (11), PingReturn (7);
- the checkpoint record (sequence id -2): one Checkpoint message, its bytes right after
  the record.

Checkpoints: the coordinator asks (2, or 11 when it becomes primary) after the last page
it sent and sends nothing more until the answer. The answer is the state after every
page sent before the question: a Checkpoint (8). A binding that cannot checkpoint at that
point (the Python binding: a handler awaits a result that later pages carry) answers with
a TakeCheckpoint (2) instead: "not now, ask me again"; the coordinator sends the next
page and asks again. The same TakeCheckpoint sent unasked means "checkpoint soon, please".

Errors: the only exception out of ``receive_data`` is ``BindingProtocolError`` (a
``ProtocolError``), and after the first one the end is poisoned: every later call raises
it again, a stream that was wrong once is never half-trusted.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Final, TypeAlias

import xxhash

from ambrosia.errors import BindingProtocolError, ProtocolError
from ambrosia.log.page import Page
from ambrosia.names import INSTANCE_NAME_BYTES_MAX
from ambrosia.protocol.batch import check_batch
from ambrosia.wire.frames import (
    RECORD_HEADER_BYTES,
    RECORD_SEQUENCE_CHECKPOINT,
    RECORD_SEQUENCE_MADE_UP,
    encode_log_record_header,
    log_record_header,
)
from ambrosia.wire.messages import (
    KIND_FORK,
    KIND_IMPULSE,
    METHOD_ID_SOURCE,
    RESERVED_CALL,
    TYPE_RPC,
    AttachTo,
    CheckpointHeader,
    Direction,
    InitialMessage,
    Message,
    MessageType,
    OutgoingRpc,
    Ping,
    PingReturn,
    RpcBatch,
    TakeCheckpoint,
    decode_message_body,
    decode_messages,
    encode,
)
from ambrosia.wire.varint import (
    Incomplete,
    decode_zigzag_int,
    decode_zigzag_long,
    encode_zigzag_int,
    encode_zigzag_long,
)

__all__ = [
    "ACCEPTED_FROM_BINDING",
    "AttachRequested",
    "BindingEnd",
    "CheckpointAsked",
    "CheckpointLoaded",
    "CheckpointReceived",
    "ControlReceived",
    "CoordinatorEnd",
    "InitialReceived",
    "PageReceived",
    "PingReceived",
    "RpcReceived",
    "source_marker",
]

# The types a binding may send: the original coordinator's list.
ACCEPTED_FROM_BINDING: Final = frozenset((0, 1, 2, 5, 6, 7, 8, 9))

_RECORD_HEADER: Final = struct.Struct("<iiQq")
# The coordinator's receive buffer is given back when empty and larger than this (it grew
# for one large message).
_RECEIVE_BUFFER_BYTES_KEPT: Final = 4 * 1024 * 1024
_VARINT_BYTES_MAX: Final = 5  # a ZigZagInt's longest encoding
# Runs of messages from this size on are joined from views of the buffer (no copy per
# message before the join); smaller ones from copied slices, which cost less each.
_VIEW_JOIN_BYTES_MIN: Final = 1024
# A page record smaller than this is sent as one joined part, a larger one in parts.
_JOINED_RECORD_BYTES_MAX: Final = 64 * 1024
_PATTERNS_MAX: Final = 256
# A binding's receive buffer: the socket reads into at least _READ_CHUNK_BYTES of free
# space; records from _LARGE_RECORD_BYTES on are read into a buffer of their own.
_READ_CHUNK_BYTES: Final = 256 * 1024
_LARGE_RECORD_BYTES: Final = 1024 * 1024
_TAKE_CHECKPOINT: Final = encode(TakeCheckpoint())
_SOURCE_HEAD: Final = bytes((TYPE_RPC, RESERVED_CALL)) + encode_zigzag_int(METHOD_ID_SOURCE)
_SOURCE_HEAD_WITH_KIND: Final = _SOURCE_HEAD + bytes((KIND_FORK,))


# -- events at the coordinator's end ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class RpcReceived:
    """An outgoing RPC, already in the form its receiver logs (an incoming RPC).

    ``destination`` is "" for a call to self; ``kind`` is its RPC kind.
    """

    destination: str
    message: bytes
    kind: int
    count: int = 1  # messages of one shape back to back in ``message``


@dataclass(frozen=True, slots=True)
class AttachRequested:
    destination: str


@dataclass(frozen=True, slots=True)
class CheckpointAsked:
    """TakeCheckpoint from the binding: a refusal if one was asked, else a request."""


@dataclass(frozen=True, slots=True)
class CheckpointReceived:
    data: bytes


@dataclass(frozen=True, slots=True)
class InitialReceived:
    """The InitialMessage, framed as it is logged (size, type 9, data)."""

    message: bytes


@dataclass(frozen=True, slots=True)
class PingReceived:
    data: bytes


CoordinatorEvent: TypeAlias = (
    RpcReceived
    | AttachRequested
    | CheckpointAsked
    | CheckpointReceived
    | InitialReceived
    | PingReceived
)


def source_marker(source: str, group_bytes: int) -> bytes:
    """The marker that precedes a group of ``group_bytes`` from ``source`` in a record."""
    data = _SOURCE_HEAD_WITH_KIND + encode_zigzag_long(group_bytes) + source.encode()
    return encode_zigzag_int(len(data)) + data


class CoordinatorEnd:
    """The coordinator's end of one binding connection (both its streams).

    Cost: a binding sends calls at more than a hundred thousand a second, so the common
    input, a run of RPCs of one shape (same destination, same size) back to back, is
    taken without a Python step per message: one compiled pattern finds the run, the
    destination's name comes off every message in one join, and the batch check
    (``ambrosia.protocol.batch``) checks the run in C. Runs are at most
    ``run_bytes_max`` long (an output stream's batch bound). Other messages go through
    the codec of ``ambrosia.wire.messages`` one by one.
    """

    __slots__ = (
        "_buffer",
        "_checkpoint",
        "_checkpoint_length",
        "_end",
        "_error",
        "_need",
        "_offset",
        "_patterns",
        "checkpoint_bytes_max",
        "committer_id",
        "message_bytes_max",
        "messages_received",
        "run_bytes_max",
    )

    def __init__(
        self,
        *,
        committer_id: int,
        message_bytes_max: int,
        checkpoint_bytes_max: int,
        run_bytes_max: int = 256 * 1024,
    ) -> None:
        # The log's instance id is unsigned; the header field is a signed IntFixed.
        self.committer_id = committer_id - (1 << 32) if committer_id >= 1 << 31 else committer_id
        self.message_bytes_max = message_bytes_max
        self.checkpoint_bytes_max = checkpoint_bytes_max
        self.run_bytes_max = run_bytes_max
        # Bytes received are in _buffer[_offset:_end]; the rest of it is free space.
        self._buffer = bytearray()
        self._offset = 0
        self._end = 0
        self._need = 0  # the size of the message that is not complete yet
        self._checkpoint: bytearray | None = None
        self._checkpoint_length = 0
        self._error: BindingProtocolError | None = None
        self._patterns: dict[tuple[bytes, int], re.Pattern[bytes]] = {}
        self.messages_received = 0

    @property
    def inside_checkpoint(self) -> bool:
        """Whether Checkpoint bytes were announced and not all have arrived."""
        return self._checkpoint is not None

    @property
    def buffered_bytes(self) -> int:
        return self._end - self._offset

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Free space to receive into (``asyncio.BufferedProtocol``): the socket's bytes go
        straight into the buffer the messages are parsed from, no copy in between.

        Room for the whole of a message whose start is in (its size is checked against
        ``message_bytes_max`` first), else at least ``_READ_CHUNK_BYTES``. The buffer moves
        or grows only here, never while a view of it may be out (``buffer_updated``).
        """
        buffer = self._buffer
        start, end = self._offset, self._end
        if start == end:
            start = end = self._offset = self._end = 0
            if len(buffer) > _RECEIVE_BUFFER_BYTES_KEPT:
                buffer = self._buffer = bytearray()  # a large message's room, given back
        want = max(sizehint, _READ_CHUNK_BYTES, self._need - (end - start))
        if len(buffer) - end < want:
            if start:
                buffer[: end - start] = buffer[start:end]
                end -= start
                self._offset, self._end = 0, end
            if len(buffer) - end < want:
                buffer.extend(bytes(want - (len(buffer) - end)))
        return memoryview(buffer)[end:]

    def buffer_updated(self, nbytes: int) -> list[CoordinatorEvent]:
        """``nbytes`` were written into the last ``get_buffer``: the events they complete."""
        self.received(nbytes)
        return self.take_events()

    def received(self, nbytes: int) -> None:
        """``nbytes`` were written into the last ``get_buffer``; parsed by ``take_events``.

        The split lets a socket's reads pile up between two parses: a run of calls is
        then found whole, in one pass, however the stream was cut into reads.
        """
        self._end += nbytes

    def take_events(self) -> list[CoordinatorEvent]:
        """The events that the bytes received so far complete, in order."""
        self._raise_if_poisoned()
        events: list[CoordinatorEvent] = []
        try:
            self._drain(events)
        except (Incomplete, IndexError, UnicodeDecodeError) as error:
            self._poison(ProtocolError(f"a message shorter than its fields ({error!r})"))
        except ProtocolError as error:
            self._poison(error)
        return events

    def receive_data(self, data: bytes) -> list[CoordinatorEvent]:
        """Feed bytes from the binding; the complete events they finish, in order."""
        self._raise_if_poisoned()
        with self.get_buffer(len(data)) as view:
            view[: len(data)] = data
        return self.buffer_updated(len(data))

    def _drain(self, out: list[CoordinatorEvent]) -> None:
        buffer = self._buffer
        self._need = 0
        while True:
            position = self._offset
            filled = self._end
            if self._checkpoint is not None:
                take = min(self._checkpoint_length - len(self._checkpoint), filled - position)
                self._checkpoint += buffer[position : position + take]
                self._offset = position + take
                if len(self._checkpoint) < self._checkpoint_length:
                    return
                out.append(CheckpointReceived(bytes(self._checkpoint)))
                self._checkpoint = None
                continue
            if position >= filled:
                return
            try:
                if filled - position >= _VARINT_BYTES_MAX:
                    size, start = decode_zigzag_int(buffer, position)
                else:  # the varint may end past what was received: no stale byte read
                    size, start = decode_zigzag_int(buffer[position:filled])
                    start += position
            except Incomplete:
                return
            if size <= 0:
                raise ProtocolError(f"message size {size} is not positive")
            if size > self.message_bytes_max:
                raise ProtocolError(
                    f"message of {size} bytes exceeds the limit of {self.message_bytes_max} bytes"
                )
            end = start + size
            if end > filled:
                self._need = end - position
                return
            message_type = buffer[start]
            if message_type not in ACCEPTED_FROM_BINDING:
                raise ProtocolError(
                    f"message type {message_type} is not accepted from a binding "
                    f"(only {sorted(ACCEPTED_FROM_BINDING)})"
                )
            if message_type == TYPE_RPC:
                event, self._offset = self._rpc_run(position, start, end)
                out.append(event)
                continue
            self.messages_received += 1
            self._offset = end
            body = memoryview(bytes(buffer[start:end]))  # owned: the buffer moves on
            self._handle(decode_message_body(body, Direction.BINDING_TO_COORDINATOR), out)

    def _rpc_run(self, position: int, start: int, end: int) -> tuple[RpcReceived, int]:
        """The RPC at ``position`` and the messages of its shape right after it."""
        buffer = self._buffer
        name_length, name_at = decode_zigzag_int(buffer, start + 1)
        name_end = name_at + name_length
        if name_length < 0 or name_length > INSTANCE_NAME_BYTES_MAX:
            raise ProtocolError(f"destination name length {name_length}")
        if name_end + 3 > end:
            raise ProtocolError(f"an RPC of {end - start} bytes is shorter than its fields")
        destination = bytes(buffer[name_at:name_end]).decode()
        method, kind_at = decode_zigzag_int(buffer, name_end + 1)
        kind = buffer[kind_at] if kind_at < end else -1
        message_bytes = end - position
        head_bytes = name_end - position
        # The incoming form: the size without the name's length and the name, type 0,
        # then the rest as sent (reserved byte, method id, kind, arguments).
        head_in = encode_zigzag_int(end - start - (name_end - start - 1)) + b"\x00"
        if kind == KIND_IMPULSE:
            message = head_in + bytes(buffer[name_end:end])
            if destination:
                raise ProtocolError(f"an impulse addressed to {destination!r}: impulses go to self")
            if method < 0 or buffer[name_end] != RESERVED_CALL:
                raise ProtocolError(
                    f"an impulse to method id {method} (reserved byte {buffer[name_end]}): "
                    "impulses are calls to methods >= 0"
                )
            self.messages_received += 1
            return RpcReceived("", message, KIND_IMPULSE, 1), end
        run_end = end
        limit = min(self._end, position + max(self.run_bytes_max, message_bytes))
        if position + 2 * message_bytes <= limit:
            key = (bytes(buffer[position:name_end]), message_bytes - head_bytes)
            pattern = self._patterns.get(key)
            if pattern is None:
                if len(self._patterns) >= _PATTERNS_MAX:
                    self._patterns.clear()
                pattern = re.compile(b"(?:" + re.escape(key[0]) + b".{%d})+" % key[1], re.DOTALL)
                self._patterns[key] = pattern
            found = pattern.match(buffer, position, limit)
            assert found is not None  # the first message has the shape by construction
            run_end = found.end()
        count = (run_end - position) // message_bytes
        if count == 1:
            message = head_in + bytes(buffer[name_end:end])
        else:
            step = message_bytes - head_bytes
            if message_bytes < _VIEW_JOIN_BYTES_MIN:
                # Small messages: a copied slice each is cheaper than a view each.
                parts = [buffer[at : at + step] for at in range(name_end, run_end, message_bytes)]
                message = head_in + head_in.join(parts)
            else:
                with memoryview(buffer) as view:
                    message = head_in + head_in.join(
                        [view[at : at + step] for at in range(name_end, run_end, message_bytes)]
                    )
        try:
            check_batch(message, count, count)
        except ProtocolError as error:
            if count == 1:
                raise ProtocolError(
                    f"an RPC to {destination or 'self'} that would be refused where it is "
                    f"logged: {error}"
                ) from error
            # A run mixing in a message the check refuses (an impulse, say): one by one.
            return self._rpc_run_single(position, start, end, destination, head_in, kind)
        self.messages_received += count
        return RpcReceived(destination, message, kind, count), run_end

    def _rpc_run_single(
        self, position: int, start: int, end: int, destination: str, head_in: bytes, kind: int
    ) -> tuple[RpcReceived, int]:
        name_length, name_at = decode_zigzag_int(self._buffer, start + 1)
        message = head_in + bytes(self._buffer[name_at + name_length : end])
        check_batch(message, 1, 1)
        self.messages_received += 1
        return RpcReceived(destination, message, kind, 1), end

    def receive_eof(self) -> None:
        """The binding closed its stream: an error unless it stopped between messages."""
        self._raise_if_poisoned()
        if self._checkpoint is not None:
            self._poison(
                ProtocolError(
                    f"disconnected inside a checkpoint ({len(self._checkpoint)} of "
                    f"{self._checkpoint_length} bytes received)"
                )
            )
        if self.buffered_bytes:
            self._poison(
                ProtocolError(
                    f"disconnected inside a message ({self.buffered_bytes} bytes of it received)"
                )
            )

    def _poison(self, error: ProtocolError) -> None:
        where = f"after {self.messages_received} complete messages"
        self._error = BindingProtocolError(f"binding protocol: {error} ({where})")
        raise self._error from error

    def _raise_if_poisoned(self) -> None:
        if self._error is not None:
            raise self._error.with_traceback(None)

    def _handle(self, event: Message, out: list[CoordinatorEvent]) -> None:
        kind = type(event)
        if kind is RpcBatch:
            assert isinstance(event, RpcBatch)
            for rpc in event.rpcs:
                if not isinstance(rpc, OutgoingRpc):
                    raise ProtocolError("an RPCBatch from a binding holds a non-outgoing RPC")
                out.append(_routed(rpc))
        elif kind is AttachTo:
            assert isinstance(event, AttachTo)
            out.append(AttachRequested(_checked_name(event.destination)))
        elif kind is TakeCheckpoint:
            out.append(CheckpointAsked())
        elif kind is CheckpointHeader:
            assert isinstance(event, CheckpointHeader)
            if event.length > self.checkpoint_bytes_max:
                raise ProtocolError(
                    f"checkpoint of {event.length} bytes exceeds the limit of "
                    f"{self.checkpoint_bytes_max} bytes"
                )
            if event.length == 0:
                out.append(CheckpointReceived(b""))
            else:
                self._checkpoint = bytearray()
                self._checkpoint_length = event.length
        elif kind is InitialMessage:
            assert isinstance(event, InitialMessage)
            data = bytes((MessageType.INITIAL_MESSAGE,)) + event.data
            out.append(InitialReceived(encode_zigzag_int(len(data)) + data))
        elif kind is Ping:
            assert isinstance(event, Ping)
            out.append(PingReceived(event.payload))
        # PingReturn: an answer to nothing we send; accepted and dropped.

    # -- records to send ---------------------------------------------------------------

    def page_record(self, page: Page) -> bytes:
        """The record of a durable page: per group, a source marker and its messages."""
        return b"".join(bytes(part) for part in self.page_record_parts(page))

    def page_record_parts(self, page: Page) -> list[bytes | memoryview]:
        """``page_record`` as its header, then each group's marker and messages (views of
        the page, not copied), to be written one after the other; the check bytes are
        hashed over the parts as they are. A small record comes joined, as one part."""
        parts: list[bytes | memoryview] = [b""]
        check = xxhash.xxh64()
        body_bytes = 0
        for group in page.groups:
            marker = source_marker(group.source, len(group.messages))
            check.update(marker)
            check.update(group.messages)
            parts += (marker, group.messages)
            body_bytes += len(marker) + len(group.messages)
        parts[0] = log_record_header(
            self.committer_id, page.sequence, body_bytes, check.intdigest()
        )
        if body_bytes < _JOINED_RECORD_BYTES_MAX:
            return [b"".join(parts)]  # one write: a socket call per part costs more
        return parts

    def control_record(self, *messages: bytes) -> bytes:
        """A record the coordinator made up (sequence -1) holding ``messages``."""
        body = b"".join(messages)
        return encode_log_record_header(self.committer_id, RECORD_SEQUENCE_MADE_UP, body) + body

    def checkpoint_record(self, length: int) -> bytes:
        """The checkpoint record; the ``length`` checkpoint bytes follow it, raw."""
        body = encode(CheckpointHeader(length))
        return encode_log_record_header(self.committer_id, RECORD_SEQUENCE_CHECKPOINT, body) + body


def _checked_name(name: str) -> str:
    if len(name.encode()) > INSTANCE_NAME_BYTES_MAX:
        raise ProtocolError(f"destination name longer than {INSTANCE_NAME_BYTES_MAX} bytes")
    return name


def _routed(rpc: OutgoingRpc) -> RpcReceived:
    """The call as its receiver will log it, checked as a peer checks a batch: what a
    binding sends is logged for good, by this instance or by a peer that would refuse
    the whole batch holding it."""
    destination = _checked_name(rpc.destination)
    message = encode(rpc.to_incoming())
    if rpc.rpc_kind == KIND_IMPULSE:
        if destination:
            raise ProtocolError(f"an impulse addressed to {destination!r}: impulses go to self")
        if rpc.method_id < 0 or rpc.is_return:
            raise ProtocolError(
                f"an impulse to method id {rpc.method_id} (reserved byte "
                f"{rpc.reserved}): impulses are calls to methods >= 0"
            )
    else:
        try:
            check_batch(message, 1, 1)
        except ProtocolError as error:
            raise ProtocolError(
                f"an RPC to {destination or 'self'} that would be refused where it is "
                f"logged: {error}"
            ) from error
    return RpcReceived(destination, message, int(rpc.rpc_kind), 1)


# -- the binding's end --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PageReceived:
    """A durable log page: its groups as (sender, messages exactly as logged)."""

    sequence: int
    groups: tuple[tuple[str, bytes | memoryview], ...]


@dataclass(frozen=True, slots=True)
class CheckpointLoaded:
    data: bytes


@dataclass(frozen=True, slots=True)
class ControlReceived:
    """A message of a made-up record: TakeCheckpoint, TakeBecomingPrimaryCheckpoint, ..."""

    message: Message


BindingEvent: TypeAlias = PageReceived | CheckpointLoaded | ControlReceived


class BindingEnd:
    """A binding's end: log records in, events out; what to send, as bytes."""

    __slots__ = (
        "_buffer",
        "_checkpoint",
        "_checkpoint_remaining",
        "_end",
        "_error",
        "_need",
        "_record",
        "_record_filled",
        "_start",
        "record_bytes_max",
    )

    def __init__(self, *, record_bytes_max: int) -> None:
        self.record_bytes_max = record_bytes_max
        # Received bytes live in ``_buffer[_start:_end]``; the socket reads straight into
        # the free space after them (``get_buffer``), and each record's body is copied
        # out once. ``_need``: the bytes the next record needs, once its header is in.
        # A large record is read into a buffer of its own instead (``_record``, filled
        # up to ``_record_filled``), and its body is never copied.
        self._buffer = bytearray(_READ_CHUNK_BYTES)
        self._start = 0
        self._end = 0
        self._need = RECORD_HEADER_BYTES
        self._record: bytearray | None = None
        self._record_filled = 0
        self._checkpoint: bytearray | None = None
        self._checkpoint_remaining = 0
        self._error: ProtocolError | None = None

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where the next bytes from the coordinator go (``asyncio.BufferedProtocol``).

        The rest of a large record, or at least ``_READ_CHUNK_BYTES`` free. Fill it,
        then call ``buffer_updated`` with the count. The receive buffer holds at most
        one record below ``_LARGE_RECORD_BYTES`` plus a read's worth.
        """
        record = self._record
        if record is not None:
            return memoryview(record)[self._record_filled :]
        buffer = self._buffer
        start, end = self._start, self._end
        want = max(sizehint, _READ_CHUNK_BYTES, self._need - (end - start))
        if len(buffer) - end < want:
            if start:
                # Move the partial record to the front (no resize: no view is out now).
                buffer[: end - start] = buffer[start:end]
                end -= start
                self._start, self._end = 0, end
            if len(buffer) - end < want:
                buffer.extend(bytes(want - (len(buffer) - end)))
        return memoryview(buffer)[end:]

    def buffer_updated(self, nbytes: int) -> list[BindingEvent]:
        """``nbytes`` were written into the last ``get_buffer``: the events they complete."""
        if self._error is not None:
            raise self._error.with_traceback(None)
        events: list[BindingEvent] = []
        try:
            record = self._record
            if record is not None:
                self._record_filled += nbytes
                if self._record_filled < len(record):
                    return events
                self._record = None
                _, _, check, sequence = _RECORD_HEADER.unpack_from(record, 0)
                self._record_body(memoryview(record)[RECORD_HEADER_BYTES:], check, sequence, events)
            else:
                self._end += nbytes
            self._drain(events)
        except ProtocolError as error:
            self._error = error
            raise
        return events

    def receive_data(self, data: bytes) -> list[BindingEvent]:
        with self.get_buffer(len(data)) as view:
            view[: len(data)] = data
        return self.buffer_updated(len(data))

    def _drain(self, events: list[BindingEvent]) -> None:
        buffer = self._buffer
        position = self._start
        end = self._end
        while True:
            if self._checkpoint is not None:
                take = min(self._checkpoint_remaining, end - position)
                self._checkpoint += buffer[position : position + take]
                position += take
                self._checkpoint_remaining -= take
                if self._checkpoint_remaining:
                    break
                events.append(CheckpointLoaded(bytes(self._checkpoint)))
                self._checkpoint = None
            if end - position < RECORD_HEADER_BYTES:
                self._need = RECORD_HEADER_BYTES
                break
            _, size, check, sequence = _RECORD_HEADER.unpack_from(buffer, position)
            if not RECORD_HEADER_BYTES <= size <= self.record_bytes_max:
                raise ProtocolError(f"log record size {size} outside 24..{self.record_bytes_max}")
            if end - position < size:
                if size >= _LARGE_RECORD_BYTES:
                    # Its own buffer: the rest is read straight into it.
                    record = bytearray(size)
                    have = end - position
                    with memoryview(buffer) as view:
                        record[:have] = view[position:end]
                    self._record, self._record_filled = record, have
                    position = end
                else:
                    self._need = size
                break
            with memoryview(buffer) as view:
                body = bytes(view[position + RECORD_HEADER_BYTES : position + size])
            position += size
            self._record_body(body, check, sequence, events)
        if position == end:
            self._start = self._end = 0
        else:
            self._start = position

    def _record_body(
        self, body: bytes | memoryview, check: int, sequence: int, events: list[BindingEvent]
    ) -> None:
        if xxhash.xxh64_intdigest(body) != check:
            raise ProtocolError(f"log record {sequence} fails its check bytes")
        if sequence >= 0:
            events.append(PageReceived(sequence, _groups(body)))
        elif sequence == RECORD_SEQUENCE_CHECKPOINT:
            messages = decode_messages(bytes(body), Direction.COORDINATOR_TO_BINDING)
            if len(messages) != 1 or not isinstance(messages[0], CheckpointHeader):
                raise ProtocolError("a checkpoint record holds other than one Checkpoint")
            self._checkpoint = bytearray()
            self._checkpoint_remaining = messages[0].length
        else:
            for message in decode_messages(bytes(body), Direction.COORDINATOR_TO_BINDING):
                events.append(ControlReceived(message))

    # -- what a binding sends -------------------------------------------------------------

    @staticmethod
    def checkpoint(data: bytes) -> bytes:
        """A Checkpoint message followed by its bytes."""
        return encode(CheckpointHeader(len(data))) + data

    @staticmethod
    def initial_message(data: bytes) -> bytes:
        return encode(InitialMessage(data))

    @staticmethod
    def take_checkpoint() -> bytes:
        return _TAKE_CHECKPOINT

    @staticmethod
    def attach(destination: str) -> bytes:
        return encode(AttachTo(destination))

    @staticmethod
    def ping_return(data: bytes) -> bytes:
        return encode(PingReturn(data))


def outgoing_from_incoming(destination: bytes, message: bytes | memoryview) -> bytes:
    """An incoming-form RPC (size, type 0, reserved, ...) as the binding sends it.

    ``destination``: the UTF-8 name, empty for self. Inserts the name's length and the
    name after the type byte and fixes the size prefix.
    """
    size, start = decode_zigzag_int(message, 0)
    name_length = encode_zigzag_int(len(destination))
    new_size = size + len(name_length) + len(destination)
    return b"".join(
        (
            encode_zigzag_int(new_size),
            bytes(message[start : start + 1]),
            name_length,
            destination,
            bytes(message[start + 1 :]),
        )
    )


def _groups(body: bytes | memoryview) -> tuple[tuple[str, bytes | memoryview], ...]:
    """A page record's groups; each one's messages a view into ``body`` (not copied)."""
    groups: list[tuple[str, bytes | memoryview]] = []
    whole = memoryview(body)
    position = 0
    end = len(body)
    try:
        while position < end:
            size, start = decode_zigzag_int(body, position)
            stop = start + size
            if body[start : start + len(_SOURCE_HEAD_WITH_KIND)] != _SOURCE_HEAD_WITH_KIND:
                raise ProtocolError(f"page record: no source marker at byte {position}")
            length, name_at = decode_zigzag_long(body, start + len(_SOURCE_HEAD_WITH_KIND))
            if stop > end or length < 0 or stop + length > end:
                raise ProtocolError(f"page record: a group at byte {position} runs past the end")
            groups.append((bytes(whole[name_at:stop]).decode(), whole[stop : stop + length]))
            position = stop + length
    except (Incomplete, UnicodeDecodeError) as error:
        raise ProtocolError(f"page record: bad source marker at byte {position}") from error
    return tuple(groups)
