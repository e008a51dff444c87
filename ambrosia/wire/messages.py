"""Every message on the wire, as frozen dataclasses, with their byte layouts.

Framing
-------
Every message, in every direction, is ``size: ZigZagInt`` (bytes of type + data, so at
least 1), ``type: 1 byte``, ``data``. Integers are zig-zag varints (:mod:`.varint`).

Three directions, three vocabularies
------------------------------------
The same type byte can mean different layouts depending on who speaks, so every decoder
takes a :class:`Direction`. A type that is not part of a direction's vocabulary is refused
with :class:`~ambrosia.errors.UnknownMessageTypeError`, exactly like a type nobody knows::

    type  message                         binding->coord  coord->binding  coord<->coord
    0     RPC                             OutgoingRpc     IncomingRpc     -
    1     AttachTo                        yes             -               -
    2     TakeCheckpoint                  yes             yes             -
    3     Commit                          -               -               yes
    4     ReplayFrom                      -               -               yes
    5     RpcBatch                        yes             yes             -
    6/7   Ping / PingReturn               yes             yes             yes
    8     CheckpointHeader                yes             yes             -
    9     InitialMessage                  yes             yes             -
    10    UpgradeTakeCheckpoint           -               yes             -
    11    TakeBecomingPrimaryCheckpoint   -               yes             -
    12    UpgradeService                  -               yes             -
    13    CountReplayableRpcBatch         yes             yes             -
    14    TrimTo                          -               -               yes
    15    BecomingPrimary                 -               yes             -
    16    Hello                           -               -               yes
    17    DataBatch                       -               -               yes
    18    InputHeld                       -               -               yes

Binding protocol layouts (facts of the original protocol)
---------------------------------------------------------
- 0 RPC, coordinator -> binding (:class:`IncomingRpc`): ``reserved: 1 byte`` (0 = a call;
  bindings set it to mark return values), ``method_id: ZigZagInt`` (negative ids are the
  system's), ``rpc_kind: 1 byte`` (0 async, 1 fork, 2 impulse), ``args`` to the end.
- 0 RPC, binding -> coordinator (:class:`OutgoingRpc`): ``destination length: ZigZagInt``
  (0 = a call to self, no name follows), ``destination: UTF-8``, then the incoming fields.
- 1 AttachTo: the destination's name, UTF-8, to the end of the message (no length).
- 5 RpcBatch: ``count: ZigZagInt``, then ``count`` complete RPC messages (own size and
  type each, in the layout of the direction).
- 13 CountReplayableRpcBatch: ``count: ZigZagInt``, ``replayable_count: ZigZagInt``
  (how many are not impulses), then the messages.
- 8 CheckpointHeader: ``length: ZigZagLong``. The checkpoint bytes follow on the stream
  *outside* the message, so they can exceed any frame limit (and 2 GiB); the streaming
  decoders of :mod:`.frames` deliver them as raw chunks.
- 9 InitialMessage: opaque bytes to the end.
- 6/7 Ping / PingReturn: the original leaves them undocumented. Our choice: opaque bytes
  to the end (for instance a send time chosen by the prober), which PingReturn echoes.
- 2, 10, 11, 12, 15: no data; any data byte is a protocol error.

Coordinator <-> coordinator layouts (our design)
------------------------------------------------
Each ordered pair (sender, receiver) numbers the sender's RPCs 1, 2, 3, ... with two
counts, total and replayable (all but impulses); the numbers themselves never travel
except in these control messages.

- 16 Hello: ``protocol_version: ZigZagInt``, ``sender: ZigZagInt length + UTF-8``,
  ``receiver: ZigZagInt length + UTF-8``, ``sender_epoch: ZigZagLong``, ``acked:
  ZigZagLong``. First message on every connection (sender -> receiver); lets the
  receiver check who it talks to, refuse a stale primary of the peer (an epoch lower
  than one it already admitted), and compare ``acked`` (the highest sequence number the
  receiver ever acknowledged to this sender, as the sender holds it) with its own log:
  a receiver whose log ends below ``acked`` lost calls it had acknowledged.
- 17 DataBatch: ``first_seq: ZigZagLong`` (total sequence number of the first RPC in the
  batch, >= 1), ``count: ZigZagInt``, ``replayable_count: ZigZagInt`` (0 <= replayable <=
  count), then ``count`` packed incoming-RPC messages (each with its own size and type) to
  the end of the frame. Coordinators never parse the packed part: it is copied into the
  receiver's log page as it is, and the binding parses it from the log record. Decoding
  exposes it as :attr:`DataBatch.payload`, a zero-copy ``memoryview`` when the source is
  immutable, otherwise one copy out of the mutable buffer.
- 3 Commit: ``seq: ZigZagLong``, ``replayable_seq: ZigZagLong``: every RPC up to and
  including these numbers is durably logged by the receiver (0 = nothing yet).
- 4 ReplayFrom: ``total: ZigZagLong``, ``replayable: ZigZagLong``, optionally ``digest:
  ZigZagLong``: the receiver's resume point; the sender resends from the RPC *after* these
  numbers. ``digest`` (0 <= digest < 2**32), when present, is the CRC-32 of every framed
  message the receiver accepted from this sender, 1 through ``total``, back to back: the
  sender compares it with what it produced (``ambrosia.protocol.outputs``), so that a
  replay which regenerates different output is caught. Absent: the receiver does not know.
- 14 TrimTo: ``seq: ZigZagLong``: the sender may drop its buffered output up to and
  including ``seq``.
- 18 InputHeld: ``held: 1 byte`` (0 or 1), receiver -> sender: the receiver stopped (1)
  or resumed (0) reading this connection because its own output to the sender is over
  its bound (see ``ambrosia.protocol.outputs``): a paused peer, not a silent one.

For Commit and ReplayFrom both counts are non-negative and replayable never exceeds
total (replayable counts a subset of all RPCs); a message that breaks this is refused at
the wire, so the protocol layer never sees impossible numbers.

Limits
------
Instance names are at most :data:`INSTANCE_NAME_BYTES_MAX` bytes of UTF-8. Whole frames
are bounded by the stream decoders (:mod:`.frames`), which check the size prefix before
buffering a body.

Decoding never lets anything but :class:`~ambrosia.errors.ProtocolError` (and subclasses)
escape: truncation inside a complete frame, bad UTF-8, trailing bytes and out-of-range
numbers are all protocol errors.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Final, TypeAlias

from ambrosia.errors import ProtocolError, UnknownMessageTypeError
from ambrosia.names import INSTANCE_NAME_BYTES_MAX
from ambrosia.wire.varint import (
    BytesLike,
    Incomplete,
    decode_zigzag_int,
    decode_zigzag_long,
    encode_zigzag_int,
    encode_zigzag_long,
)

__all__ = [
    "INSTANCE_NAME_BYTES_MAX",
    "KIND_ASYNC",
    "KIND_FORK",
    "KIND_IMPULSE",
    "PEER_PROTOCOL_VERSION",
    "RESERVED_CALL",
    "RESERVED_RESULT",
    "TYPE_DATA_BATCH",
    "TYPE_RPC",
    "AttachTo",
    "BecomingPrimary",
    "CheckpointHeader",
    "Commit",
    "CountReplayableRpcBatch",
    "DataBatch",
    "Direction",
    "Hello",
    "IncomingRpc",
    "InitialMessage",
    "InputHeld",
    "Message",
    "MessageType",
    "OutgoingRpc",
    "Ping",
    "PingReturn",
    "ReplayFrom",
    "RpcBatch",
    "RpcKind",
    "TakeBecomingPrimaryCheckpoint",
    "TakeCheckpoint",
    "TrimTo",
    "UpgradeService",
    "UpgradeTakeCheckpoint",
    "decode_message",
    "decode_message_body",
    "decode_messages",
    "encode",
    "encode_data_batch_head",
    "encode_into",
    "frame_prefix",
    "rpc_header",
]

DIGEST_MAX: Final = 0xFFFFFFFF  # a CRC-32 (ReplayFrom)
PEER_PROTOCOL_VERSION: Final = 4  # 2: Hello carries ``acked``; 3: InputHeld;
# 4: ReplayFrom carries the digest of what the receiver accepted


class MessageType(enum.IntEnum):
    RPC = 0
    ATTACH_TO = 1
    TAKE_CHECKPOINT = 2
    COMMIT = 3
    REPLAY_FROM = 4
    RPC_BATCH = 5
    PING = 6
    PING_RETURN = 7
    CHECKPOINT = 8
    INITIAL_MESSAGE = 9
    UPGRADE_TAKE_CHECKPOINT = 10
    TAKE_BECOMING_PRIMARY_CHECKPOINT = 11
    UPGRADE_SERVICE = 12
    COUNT_REPLAYABLE_RPC_BATCH = 13
    TRIM_TO = 14
    BECOMING_PRIMARY = 15
    HELLO = 16
    DATA_BATCH = 17
    INPUT_HELD = 18


class RpcKind(enum.IntEnum):
    ASYNC = 0
    FORK = 1
    IMPULSE = 2


# The same values as plain ints, for code that compares bytes on the hot path (the
# dispatcher's loop, the batch check): a module global is one lookup, an enum member
# an attribute lookup more, and ``bytes((...))`` wants ints anyway.
TYPE_RPC: Final = int(MessageType.RPC)
TYPE_DATA_BATCH: Final = int(MessageType.DATA_BATCH)
KIND_ASYNC: Final = int(RpcKind.ASYNC)
KIND_FORK: Final = int(RpcKind.FORK)
KIND_IMPULSE: Final = int(RpcKind.IMPULSE)
# The reserved byte of an incoming RPC (type 0, coordinator -> binding): a call or the
# result of an earlier async call.
RESERVED_CALL: Final = 0
RESERVED_RESULT: Final = 1

# One RPC frame, built the same way everywhere (the dispatcher's hot path, the wire codec,
# the binding process): a size varint, then type, reserved byte, method id, kind, args.
# Frame sizes below _SIZE_TABLE_MAX come from a table: one lookup, not a varint encode.
_SIZE_TABLE_MAX: Final = 1 << 14
_SIZE_PREFIX: Final[tuple[bytes, ...]] = tuple(encode_zigzag_int(n) for n in range(_SIZE_TABLE_MAX))


def frame_prefix(size: int) -> bytes:
    """The size varint of a message whose type and data take ``size`` bytes."""
    return _SIZE_PREFIX[size] if size < _SIZE_TABLE_MAX else encode_zigzag_int(size)


def rpc_header(method_id: int, kind: int, reserved: int = RESERVED_CALL) -> bytes:
    """Type, reserved byte, method id and kind: the fixed head of an incoming RPC."""
    return bytes((TYPE_RPC, reserved)) + encode_zigzag_int(method_id) + bytes((kind,))


# Method ids below 0 are the system's. -1: the first-start call of the Python binding;
# -2: a coordinator's source marker in a log record sent to a binding process (the
# sender of the messages that follow; ``ambrosia.protocol.binding_link``).
METHOD_ID_SOURCE: Final = -2


class Direction(enum.Enum):
    """Who is speaking: selects the layout of type 0 and the allowed types."""

    BINDING_TO_COORDINATOR = "binding->coordinator"
    COORDINATOR_TO_BINDING = "coordinator->binding"
    COORDINATOR_TO_COORDINATOR = "coordinator<->coordinator"


# -- message classes ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IncomingRpc:
    """Type 0, coordinator -> binding (also the packed content of a DataBatch)."""

    method_id: int
    rpc_kind: RpcKind
    args: bytes
    reserved: int = RESERVED_CALL
    message_type: ClassVar[MessageType] = MessageType.RPC

    @property
    def is_return(self) -> bool:
        return self.reserved != RESERVED_CALL


@dataclass(frozen=True, slots=True)
class OutgoingRpc:
    """Type 0, binding -> coordinator. ``destination == ""`` is a call to self."""

    destination: str
    method_id: int
    rpc_kind: RpcKind
    args: bytes
    reserved: int = RESERVED_CALL
    message_type: ClassVar[MessageType] = MessageType.RPC

    @property
    def is_return(self) -> bool:
        return self.reserved != RESERVED_CALL

    def to_incoming(self) -> IncomingRpc:
        """The same call as the destination's binding will receive it."""
        return IncomingRpc(self.method_id, self.rpc_kind, self.args, self.reserved)


@dataclass(frozen=True, slots=True)
class AttachTo:
    destination: str
    message_type: ClassVar[MessageType] = MessageType.ATTACH_TO


@dataclass(frozen=True, slots=True)
class TakeCheckpoint:
    message_type: ClassVar[MessageType] = MessageType.TAKE_CHECKPOINT


@dataclass(frozen=True, slots=True)
class Commit:
    """Everything up to and including these numbers is durably logged by the receiver."""

    seq: int
    replayable_seq: int
    message_type: ClassVar[MessageType] = MessageType.COMMIT


@dataclass(frozen=True, slots=True)
class ReplayFrom:
    """The receiver's resume point: send from the RPC after these numbers.

    ``digest``: CRC-32 of the framed messages 1..total it accepted; None: not known.
    """

    total: int
    replayable: int
    digest: int | None = None
    message_type: ClassVar[MessageType] = MessageType.REPLAY_FROM


@dataclass(frozen=True, slots=True)
class RpcBatch:
    """Type 5. All RPCs are of the direction's layout (all outgoing or all incoming)."""

    rpcs: tuple[OutgoingRpc | IncomingRpc, ...]
    message_type: ClassVar[MessageType] = MessageType.RPC_BATCH


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes = b""
    message_type: ClassVar[MessageType] = MessageType.PING


@dataclass(frozen=True, slots=True)
class PingReturn:
    payload: bytes = b""
    message_type: ClassVar[MessageType] = MessageType.PING_RETURN


@dataclass(frozen=True, slots=True)
class CheckpointHeader:
    """Type 8. ``length`` raw checkpoint bytes follow on the stream, outside the message."""

    length: int
    message_type: ClassVar[MessageType] = MessageType.CHECKPOINT


@dataclass(frozen=True, slots=True)
class InitialMessage:
    data: bytes
    message_type: ClassVar[MessageType] = MessageType.INITIAL_MESSAGE


@dataclass(frozen=True, slots=True)
class UpgradeTakeCheckpoint:
    message_type: ClassVar[MessageType] = MessageType.UPGRADE_TAKE_CHECKPOINT


@dataclass(frozen=True, slots=True)
class TakeBecomingPrimaryCheckpoint:
    message_type: ClassVar[MessageType] = MessageType.TAKE_BECOMING_PRIMARY_CHECKPOINT


@dataclass(frozen=True, slots=True)
class UpgradeService:
    message_type: ClassVar[MessageType] = MessageType.UPGRADE_SERVICE


@dataclass(frozen=True, slots=True)
class CountReplayableRpcBatch:
    """Type 13: ``replayable_count`` of the RPCs are not impulses."""

    replayable_count: int
    rpcs: tuple[OutgoingRpc | IncomingRpc, ...]
    message_type: ClassVar[MessageType] = MessageType.COUNT_REPLAYABLE_RPC_BATCH


@dataclass(frozen=True, slots=True)
class TrimTo:
    seq: int
    message_type: ClassVar[MessageType] = MessageType.TRIM_TO


@dataclass(frozen=True, slots=True)
class BecomingPrimary:
    message_type: ClassVar[MessageType] = MessageType.BECOMING_PRIMARY


@dataclass(frozen=True, slots=True)
class Hello:
    protocol_version: int
    sender: str
    receiver: str
    sender_epoch: int
    acked: int = 0
    message_type: ClassVar[MessageType] = MessageType.HELLO


@dataclass(frozen=True, slots=True)
class InputHeld:
    """Type 18: the receiver holds (True) or reads again (False) the sender's input."""

    held: bool
    message_type: ClassVar[MessageType] = MessageType.INPUT_HELD


@dataclass(frozen=True, slots=True)
class DataBatch:
    """Type 17: ``count`` packed incoming-RPC messages, never parsed by coordinators.

    ``payload`` is ``bytes`` or a read-only ``memoryview`` slice of the decoded input.
    """

    first_seq: int
    count: int
    replayable_count: int
    payload: bytes | memoryview
    message_type: ClassVar[MessageType] = MessageType.DATA_BATCH


Message: TypeAlias = (
    IncomingRpc
    | OutgoingRpc
    | AttachTo
    | TakeCheckpoint
    | Commit
    | ReplayFrom
    | RpcBatch
    | Ping
    | PingReturn
    | CheckpointHeader
    | InitialMessage
    | UpgradeTakeCheckpoint
    | TakeBecomingPrimaryCheckpoint
    | UpgradeService
    | CountReplayableRpcBatch
    | TrimTo
    | BecomingPrimary
    | Hello
    | DataBatch
    | InputHeld
)

# -- decoding -------------------------------------------------------------------------
#
# Every body decoder receives a memoryview that spans exactly type byte + data of one
# message, so running off its end (IndexError, Incomplete) means the message is shorter
# than its own fields: the caller turns that into a ProtocolError.

_RPC_KINDS: Final = (RpcKind.ASYNC, RpcKind.FORK, RpcKind.IMPULSE)
_BodyDecoder: TypeAlias = Callable[[memoryview, Direction], Message]


def _owned(view: memoryview) -> bytes | memoryview:
    """A slice that stays valid: zero-copy if the source is immutable, else a copy."""
    return view if view.readonly else view.tobytes()


def _expect_end(body: memoryview, position: int) -> None:
    if position != len(body):
        raise ProtocolError(
            f"{len(body) - position} unexpected trailing bytes in a message of type {body[0]}"
        )


def _decode_name(body: memoryview, position: int) -> tuple[str, int]:
    length, position = decode_zigzag_int(body, position)
    if not 0 <= length <= INSTANCE_NAME_BYTES_MAX:
        raise ProtocolError(f"instance name length {length} outside 0..{INSTANCE_NAME_BYTES_MAX}")
    end = position + length
    if end > len(body):
        raise Incomplete
    return str(body[position:end], "utf-8"), end


def _decode_rpc_fields(body: memoryview, position: int) -> tuple[int, int, RpcKind, bytes]:
    reserved = body[position]
    method_id, position = decode_zigzag_int(body, position + 1)
    kind_byte = body[position]
    if kind_byte > 2:
        raise ProtocolError(f"unknown rpc kind {kind_byte}")
    return reserved, method_id, _RPC_KINDS[kind_byte], body[position + 1 :].tobytes()


def _decode_incoming_rpc(body: memoryview, direction: Direction) -> Message:
    # The hot path of every binding: _decode_rpc_fields inlined.
    method_id, position = decode_zigzag_int(body, 2)
    kind_byte = body[position]
    if kind_byte > 2:
        raise ProtocolError(f"unknown rpc kind {kind_byte}")
    return IncomingRpc(method_id, _RPC_KINDS[kind_byte], body[position + 1 :].tobytes(), body[1])


def _decode_outgoing_rpc(body: memoryview, direction: Direction) -> Message:
    destination, position = _decode_name(body, 1)
    reserved, method_id, kind, args = _decode_rpc_fields(body, position)
    return OutgoingRpc(destination, method_id, kind, args, reserved)


def _decode_attach_to(body: memoryview, direction: Direction) -> Message:
    if len(body) - 1 > INSTANCE_NAME_BYTES_MAX:
        raise ProtocolError(f"AttachTo name longer than {INSTANCE_NAME_BYTES_MAX} bytes")
    return AttachTo(str(body[1:], "utf-8"))


def _decode_counts(body: memoryview, position: int) -> tuple[int, int, int]:
    first, position = decode_zigzag_long(body, position)
    second, position = decode_zigzag_long(body, position)
    _expect_end(body, position)
    if not 0 <= second <= first:
        raise ProtocolError(
            f"sequence numbers ({first}, replayable {second}) must satisfy 0 <= replayable <= total"
        )
    return first, second, position


def _decode_commit(body: memoryview, direction: Direction) -> Message:
    seq, replayable_seq, _ = _decode_counts(body, 1)
    return Commit(seq, replayable_seq)


def _decode_replay_from(body: memoryview, direction: Direction) -> Message:
    total, position = decode_zigzag_long(body, 1)
    replayable, position = decode_zigzag_long(body, position)
    if not 0 <= replayable <= total:
        raise ProtocolError(
            f"sequence numbers ({total}, replayable {replayable}) must satisfy "
            "0 <= replayable <= total"
        )
    if position == len(body):
        return ReplayFrom(total, replayable)
    digest, position = decode_zigzag_long(body, position)
    _expect_end(body, position)
    if not 0 <= digest <= DIGEST_MAX:
        raise ProtocolError(f"ReplayFrom digest {digest} is not a CRC-32")
    return ReplayFrom(total, replayable, digest)


def _decode_trim_to(body: memoryview, direction: Direction) -> Message:
    seq, position = decode_zigzag_long(body, 1)
    _expect_end(body, position)
    if seq < 0:
        raise ProtocolError(f"TrimTo sequence number {seq} is negative")
    return TrimTo(seq)


def _decode_rpcs(
    body: memoryview, position: int, count: int, direction: Direction
) -> tuple[OutgoingRpc | IncomingRpc, ...]:
    if count < 0:
        raise ProtocolError(f"negative batch count {count}")
    # Each message takes at least 2 bytes: refuse an absurd count before looping.
    if count > (len(body) - position) // 2:
        raise ProtocolError(f"batch announces {count} messages in {len(body) - position} bytes")
    packed = _PackedIterator(body, position, direction, rpc_only=True)
    rpcs = tuple(packed)
    if len(rpcs) != count:
        raise ProtocolError(f"batch announces {count} messages and holds {len(rpcs)}")
    return rpcs  # type: ignore[return-value]  # rpc_only guarantees the element type


def _decode_rpc_batch(body: memoryview, direction: Direction) -> Message:
    count, position = decode_zigzag_int(body, 1)
    return RpcBatch(_decode_rpcs(body, position, count, direction))


def _decode_count_replayable_batch(body: memoryview, direction: Direction) -> Message:
    count, position = decode_zigzag_int(body, 1)
    replayable_count, position = decode_zigzag_int(body, position)
    if not 0 <= replayable_count <= count:
        raise ProtocolError(f"replayable count {replayable_count} outside 0..{count}")
    return CountReplayableRpcBatch(replayable_count, _decode_rpcs(body, position, count, direction))


def _decode_ping(body: memoryview, direction: Direction) -> Message:
    return Ping(body[1:].tobytes())


def _decode_ping_return(body: memoryview, direction: Direction) -> Message:
    return PingReturn(body[1:].tobytes())


def _decode_checkpoint_header(body: memoryview, direction: Direction) -> Message:
    length, position = decode_zigzag_long(body, 1)
    _expect_end(body, position)
    if length < 0:
        raise ProtocolError(f"negative checkpoint length {length}")
    return CheckpointHeader(length)


def _decode_initial_message(body: memoryview, direction: Direction) -> Message:
    return InitialMessage(body[1:].tobytes())


def _decode_hello(body: memoryview, direction: Direction) -> Message:
    version, position = decode_zigzag_int(body, 1)
    sender, position = _decode_name(body, position)
    receiver, position = _decode_name(body, position)
    epoch, position = decode_zigzag_long(body, position)
    acked, position = decode_zigzag_long(body, position)
    _expect_end(body, position)
    return Hello(version, sender, receiver, epoch, acked)


def _decode_input_held(body: memoryview, direction: Direction) -> Message:
    _expect_end(body, 2)
    if body[1] > 1:
        raise ProtocolError(f"InputHeld flag {body[1]} is not 0 or 1")
    return InputHeld(body[1] == 1)


def _decode_data_batch(body: memoryview, direction: Direction) -> Message:
    first_seq, position = decode_zigzag_long(body, 1)
    count, position = decode_zigzag_int(body, position)
    replayable_count, position = decode_zigzag_int(body, position)
    if first_seq < 1:
        raise ProtocolError(f"DataBatch first sequence number {first_seq} is below 1")
    if not 0 <= replayable_count <= count:
        raise ProtocolError(
            f"DataBatch counts (count {count}, replayable {replayable_count}) must satisfy "
            "0 <= replayable <= count"
        )
    return DataBatch(first_seq, count, replayable_count, _owned(body[position:]))


def _empty(message: Message) -> _BodyDecoder:
    def decode(body: memoryview, direction: Direction) -> Message:
        _expect_end(body, 1)
        return message

    return decode


_COMMON_BINDING_DECODERS: Final[dict[int, _BodyDecoder]] = {
    MessageType.TAKE_CHECKPOINT: _empty(TakeCheckpoint()),
    MessageType.RPC_BATCH: _decode_rpc_batch,
    MessageType.PING: _decode_ping,
    MessageType.PING_RETURN: _decode_ping_return,
    MessageType.CHECKPOINT: _decode_checkpoint_header,
    MessageType.INITIAL_MESSAGE: _decode_initial_message,
    MessageType.COUNT_REPLAYABLE_RPC_BATCH: _decode_count_replayable_batch,
}

# The one table of which types each direction accepts and how each is laid out.
_DECODERS: Final[dict[Direction, dict[int, _BodyDecoder]]] = {
    Direction.BINDING_TO_COORDINATOR: {
        MessageType.RPC: _decode_outgoing_rpc,
        MessageType.ATTACH_TO: _decode_attach_to,
        **_COMMON_BINDING_DECODERS,
    },
    Direction.COORDINATOR_TO_BINDING: {
        MessageType.RPC: _decode_incoming_rpc,
        **_COMMON_BINDING_DECODERS,
        MessageType.UPGRADE_TAKE_CHECKPOINT: _empty(UpgradeTakeCheckpoint()),
        MessageType.TAKE_BECOMING_PRIMARY_CHECKPOINT: _empty(TakeBecomingPrimaryCheckpoint()),
        MessageType.UPGRADE_SERVICE: _empty(UpgradeService()),
        MessageType.BECOMING_PRIMARY: _empty(BecomingPrimary()),
    },
    Direction.COORDINATOR_TO_COORDINATOR: {
        MessageType.COMMIT: _decode_commit,
        MessageType.REPLAY_FROM: _decode_replay_from,
        MessageType.PING: _decode_ping,
        MessageType.PING_RETURN: _decode_ping_return,
        MessageType.TRIM_TO: _decode_trim_to,
        MessageType.HELLO: _decode_hello,
        MessageType.DATA_BATCH: _decode_data_batch,
        MessageType.INPUT_HELD: _decode_input_held,
    },
}


def decode_message_body(body: memoryview, direction: Direction) -> Message:
    """Decode type byte + data of one message (the size prefix already stripped).

    ``body`` must span exactly the message. Only ProtocolError subclasses escape.
    """
    return _decode_body(body, _DECODERS[direction], direction)


def _decode_body(
    body: memoryview, decoders: dict[int, _BodyDecoder], direction: Direction
) -> Message:
    # Callers on the hot path look the direction's table up once (hashing an Enum
    # member runs Python code), then come here per message.
    try:
        decoder = decoders.get(body[0])
    except IndexError:
        raise ProtocolError("message of size 0 has no type byte") from None
    if decoder is None:
        raise UnknownMessageTypeError(body[0])
    try:
        return decoder(body, direction)
    except (IndexError, Incomplete):
        raise ProtocolError(
            f"message of type {body[0]} ({len(body)} bytes) is shorter than its fields"
        ) from None
    except UnicodeDecodeError as error:
        raise ProtocolError(f"message of type {body[0]} holds invalid UTF-8") from error


class _PackedIterator:
    """Messages packed back to back from ``position`` to the end of ``view``.

    ``rpc_only`` (batch contents) checks the type byte before decoding, so a batch can
    never nest another batch: no recursion a hostile peer could deepen.
    """

    __slots__ = ("_decoders", "_direction", "_position", "_rpc_only", "_view")

    def __init__(
        self, view: memoryview, position: int, direction: Direction, *, rpc_only: bool = False
    ) -> None:
        self._view = view
        self._position = position
        self._direction = direction
        self._decoders = _DECODERS[direction]
        self._rpc_only = rpc_only

    def __iter__(self) -> _PackedIterator:
        return self

    def __next__(self) -> Message:
        view = self._view
        position = self._position
        if position >= len(view):
            raise StopIteration
        try:
            size, start = decode_zigzag_int(view, position)
        except Incomplete:
            raise ProtocolError("packed messages end inside a size prefix") from None
        if size <= 0:
            raise ProtocolError(f"message size {size} is not positive")
        end = start + size
        if end > len(view):
            raise ProtocolError(
                f"message of {size} bytes at offset {position} runs past the end of its container"
            )
        if self._rpc_only and view[start] != MessageType.RPC:
            raise ProtocolError(f"a batch holds a message of type {view[start]}")
        self._position = end
        return _decode_body(view[start:end], self._decoders, self._direction)


def decode_messages(data: BytesLike, direction: Direction) -> list[Message]:
    """Decode messages packed back to back filling all of ``data``.

    For a complete buffer (a batch body, a log record body). Raw checkpoint bytes after a
    CheckpointHeader are not handled here: streams go through :mod:`.frames`.
    """
    return list(_PackedIterator(memoryview(data), 0, direction))


def decode_message(data: BytesLike, direction: Direction) -> Message:
    """Decode exactly one message (size prefix included) that fills all of ``data``."""
    view = memoryview(data)
    try:
        size, start = decode_zigzag_int(view, 0)
    except Incomplete:
        raise ProtocolError("input ends inside the size prefix") from None
    if size <= 0:
        raise ProtocolError(f"message size {size} is not positive")
    if start + size != len(view):
        raise ProtocolError(
            f"message announces {size} bytes after its prefix, {len(view) - start} are given"
        )
    return decode_message_body(view[start:], direction)


# -- encoding -------------------------------------------------------------------------
#
# Each writer appends one complete message (size prefix included) to ``out``. Sizes are
# computed before writing, so nothing is ever shifted or written twice.

_Writer: TypeAlias = Callable[[bytearray, Message], None]


def _encoded_name(name: str) -> bytes:
    encoded = name.encode("utf-8")
    if len(encoded) > INSTANCE_NAME_BYTES_MAX:
        raise ValueError(f"instance name longer than {INSTANCE_NAME_BYTES_MAX} bytes of UTF-8")
    return encoded


def _check_rpc(reserved: int, rpc_kind: int) -> None:
    if not 0 <= rpc_kind <= 2:
        raise ValueError(f"rpc kind {rpc_kind} is not one of {list(RpcKind)}")
    if not 0 <= reserved <= 255:
        raise ValueError(f"reserved byte {reserved} outside 0..255")


def _write_incoming_rpc(out: bytearray, message: Message) -> None:
    assert isinstance(message, IncomingRpc)
    _check_rpc(message.reserved, message.rpc_kind)
    header = rpc_header(message.method_id, message.rpc_kind, message.reserved)
    out += frame_prefix(len(header) + len(message.args))
    out += header
    out += message.args


def _write_outgoing_rpc(out: bytearray, message: Message) -> None:
    assert isinstance(message, OutgoingRpc)
    _check_rpc(message.reserved, message.rpc_kind)
    name = _encoded_name(message.destination)
    name_length = encode_zigzag_int(len(name))
    method = encode_zigzag_int(message.method_id)
    out += encode_zigzag_int(3 + len(name_length) + len(name) + len(method) + len(message.args))
    out.append(MessageType.RPC)
    out += name_length
    out += name
    out.append(message.reserved)
    out += method
    out.append(message.rpc_kind)
    out += message.args


def _write_fields(out: bytearray, message_type: int, *fields: BytesLike) -> None:
    """A message whose data is the concatenation of already encoded ``fields``."""
    out += encode_zigzag_int(1 + sum(len(field) for field in fields))
    out.append(message_type)
    for field in fields:
        out += field


def _write_attach_to(out: bytearray, message: Message) -> None:
    assert isinstance(message, AttachTo)
    _write_fields(out, MessageType.ATTACH_TO, _encoded_name(message.destination))


def _write_counts(out: bytearray, message_type: int, first: int, second: int) -> None:
    if not 0 <= second <= first:
        raise ValueError(f"({first}, {second}) must satisfy 0 <= replayable <= total")
    _write_fields(out, message_type, encode_zigzag_long(first), encode_zigzag_long(second))


def _write_commit(out: bytearray, message: Message) -> None:
    assert isinstance(message, Commit)
    _write_counts(out, MessageType.COMMIT, message.seq, message.replayable_seq)


def _write_replay_from(out: bytearray, message: Message) -> None:
    assert isinstance(message, ReplayFrom)
    if message.digest is None:
        _write_counts(out, MessageType.REPLAY_FROM, message.total, message.replayable)
        return
    if not 0 <= message.replayable <= message.total:
        raise ValueError(
            f"({message.total}, {message.replayable}) must satisfy 0 <= replayable <= total"
        )
    if not 0 <= message.digest <= DIGEST_MAX:
        raise ValueError(f"digest {message.digest} is not a CRC-32")
    _write_fields(
        out,
        MessageType.REPLAY_FROM,
        encode_zigzag_long(message.total),
        encode_zigzag_long(message.replayable),
        encode_zigzag_long(message.digest),
    )


def _write_trim_to(out: bytearray, message: Message) -> None:
    assert isinstance(message, TrimTo)
    if message.seq < 0:
        raise ValueError(f"TrimTo sequence number {message.seq} is negative")
    _write_fields(out, MessageType.TRIM_TO, encode_zigzag_long(message.seq))


def _packed_rpcs(rpcs: tuple[OutgoingRpc | IncomingRpc, ...]) -> bytearray:
    if rpcs:
        layout = type(rpcs[0])
        if not all(type(rpc) is layout for rpc in rpcs):
            raise ValueError("a batch mixes outgoing and incoming RPCs")
    packed = bytearray()
    for rpc in rpcs:
        encode_into(packed, rpc)
    return packed


def _write_rpc_batch(out: bytearray, message: Message) -> None:
    assert isinstance(message, RpcBatch)
    packed = _packed_rpcs(message.rpcs)
    _write_fields(out, MessageType.RPC_BATCH, encode_zigzag_int(len(message.rpcs)), packed)


def _write_count_replayable_batch(out: bytearray, message: Message) -> None:
    assert isinstance(message, CountReplayableRpcBatch)
    count = len(message.rpcs)
    if not 0 <= message.replayable_count <= count:
        raise ValueError(f"replayable count {message.replayable_count} outside 0..{count}")
    _write_fields(
        out,
        MessageType.COUNT_REPLAYABLE_RPC_BATCH,
        encode_zigzag_int(count),
        encode_zigzag_int(message.replayable_count),
        _packed_rpcs(message.rpcs),
    )


def _write_ping(out: bytearray, message: Message) -> None:
    assert isinstance(message, Ping)
    _write_fields(out, MessageType.PING, message.payload)


def _write_ping_return(out: bytearray, message: Message) -> None:
    assert isinstance(message, PingReturn)
    _write_fields(out, MessageType.PING_RETURN, message.payload)


def _write_checkpoint_header(out: bytearray, message: Message) -> None:
    assert isinstance(message, CheckpointHeader)
    if message.length < 0:
        raise ValueError(f"negative checkpoint length {message.length}")
    _write_fields(out, MessageType.CHECKPOINT, encode_zigzag_long(message.length))


def _write_initial_message(out: bytearray, message: Message) -> None:
    assert isinstance(message, InitialMessage)
    _write_fields(out, MessageType.INITIAL_MESSAGE, message.data)


def _write_input_held(out: bytearray, message: Message) -> None:
    assert isinstance(message, InputHeld)
    _write_fields(out, MessageType.INPUT_HELD, b"\x01" if message.held else b"\x00")


def _write_hello(out: bytearray, message: Message) -> None:
    assert isinstance(message, Hello)
    sender = _encoded_name(message.sender)
    receiver = _encoded_name(message.receiver)
    _write_fields(
        out,
        MessageType.HELLO,
        encode_zigzag_int(message.protocol_version),
        encode_zigzag_int(len(sender)),
        sender,
        encode_zigzag_int(len(receiver)),
        receiver,
        encode_zigzag_long(message.sender_epoch),
        encode_zigzag_long(message.acked),
    )


def encode_data_batch_head(
    first_seq: int, count: int, replayable_count: int, payload_bytes: int
) -> bytes:
    """Size prefix, type and fields of a DataBatch whose payload is sent separately.

    The head followed by ``payload_bytes`` bytes of packed RPCs is a complete DataBatch:
    a sender can write both without joining them into one buffer.
    """
    if first_seq < 1:
        raise ValueError(f"DataBatch first sequence number {first_seq} is below 1")
    if not 0 <= replayable_count <= count:
        raise ValueError(
            f"DataBatch counts (count {count}, replayable {replayable_count})"
            " must satisfy 0 <= replayable <= count"
        )
    fields = (
        bytes((MessageType.DATA_BATCH,))
        + encode_zigzag_long(first_seq)
        + encode_zigzag_int(count)
        + encode_zigzag_int(replayable_count)
    )
    return encode_zigzag_int(len(fields) + payload_bytes) + fields


def _write_data_batch(out: bytearray, message: Message) -> None:
    assert isinstance(message, DataBatch)
    out += encode_data_batch_head(
        message.first_seq, message.count, message.replayable_count, len(message.payload)
    )
    out += message.payload


def _write_empty(out: bytearray, message: Message) -> None:
    out.append(2)  # zig-zag of size 1: the type byte alone
    out.append(message.message_type)


_WRITERS: Final[dict[type, _Writer]] = {
    IncomingRpc: _write_incoming_rpc,
    OutgoingRpc: _write_outgoing_rpc,
    AttachTo: _write_attach_to,
    TakeCheckpoint: _write_empty,
    Commit: _write_commit,
    ReplayFrom: _write_replay_from,
    RpcBatch: _write_rpc_batch,
    Ping: _write_ping,
    PingReturn: _write_ping_return,
    CheckpointHeader: _write_checkpoint_header,
    InitialMessage: _write_initial_message,
    UpgradeTakeCheckpoint: _write_empty,
    TakeBecomingPrimaryCheckpoint: _write_empty,
    UpgradeService: _write_empty,
    CountReplayableRpcBatch: _write_count_replayable_batch,
    TrimTo: _write_trim_to,
    BecomingPrimary: _write_empty,
    Hello: _write_hello,
    DataBatch: _write_data_batch,
    InputHeld: _write_input_held,
}


def encode_into(out: bytearray, message: Message) -> None:
    """Append ``message`` (size prefix included) to ``out``; ValueError if unencodable.

    On ValueError nothing has been appended.
    """
    writer = _WRITERS.get(type(message))
    if writer is None:
        raise TypeError(f"{type(message).__name__} is not a wire message")
    start = len(out)
    try:
        writer(out, message)
    except ValueError:
        del out[start:]
        raise


def encode(message: Message) -> bytes:
    """The bytes of ``message``, size prefix included."""
    out = bytearray()
    encode_into(out, message)
    return bytes(out)
