"""The binding protocol's two ends, sans-IO: bytes in, events out, no event loop.

The shared vectors (``../shared/vectors``) run here through the coordinator's live path
(``CoordinatorEnd``, what ``ambrosia coordinator`` feeds its binding's bytes to): each
binding -> coordinator message turns into the event the coordinator acts on, an
outgoing RPC into exactly the incoming RPC of the vectors, and the made-up record is
byte-exact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ambrosia.errors import BindingProtocolError
from ambrosia.log.page import InputGroup, Page
from ambrosia.protocol.binding_link import (
    AttachRequested,
    BindingEnd,
    CheckpointAsked,
    CheckpointLoaded,
    CheckpointReceived,
    ControlReceived,
    CoordinatorEnd,
    CoordinatorEvent,
    InitialReceived,
    PageReceived,
    RpcReceived,
    outgoing_from_incoming,
)
from ambrosia.testing.skips import skip_unless_ci
from ambrosia.wire.messages import (
    IncomingRpc,
    RpcKind,
    TakeBecomingPrimaryCheckpoint,
    TakeCheckpoint,
    encode,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
VECTORS_PATH = REPO_ROOT.parent / "shared" / "vectors" / "binding-protocol.json"
COMMITTER_ID = 19088743


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    if not VECTORS_PATH.is_file():
        skip_unless_ci(f"protocol test vectors not found at {VECTORS_PATH}")
    loaded: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    return loaded


def vector(vectors: dict[str, Any], name: str) -> bytes:
    (found,) = [entry for entry in vectors["messages"] if entry["name"] == name]
    return bytes.fromhex(found["hex"])


def end(**limits: int) -> CoordinatorEnd:
    return CoordinatorEnd(
        committer_id=COMMITTER_ID,
        message_bytes_max=limits.get("message_bytes_max", 1 << 20),
        checkpoint_bytes_max=limits.get("checkpoint_bytes_max", 1 << 20),
    )


def feed_bytewise(coordinator: CoordinatorEnd, data: bytes) -> list[CoordinatorEvent]:
    events: list[CoordinatorEvent] = []
    for index in range(len(data)):
        events += coordinator.receive_data(data[index : index + 1])
    return events


def test_an_outgoing_rpc_becomes_exactly_the_incoming_rpc_of_the_vectors(
    vectors: dict[str, Any],
) -> None:
    events = feed_bytewise(end(), vector(vectors, "rpc outgoing fork to self"))
    assert events == [
        RpcReceived("", vector(vectors, "rpc incoming fork, method 5"), int(RpcKind.FORK))
    ]


def test_every_accepted_binding_message_of_the_vectors_on_the_live_path(
    vectors: dict[str, Any],
) -> None:
    coordinator = end()
    stream = b"".join(
        (
            vector(vectors, "attach to server"),
            vector(vectors, "take checkpoint"),
            vector(vectors, "checkpoint header, followed on the stream by 9 checkpoint bytes"),
            vector(vectors, "initial message"),
            vector(vectors, "rpc outgoing impulse to self, method 300"),
        )
    )
    events = feed_bytewise(coordinator, stream)
    impulse = IncomingRpc(300, RpcKind.IMPULSE, bytes(range(20)))
    assert events == [
        AttachRequested("server"),
        CheckpointAsked(),
        CheckpointReceived(b"dummyckpt"),
        InitialReceived(vector(vectors, "initial message")),
        RpcReceived("", encode(impulse), int(RpcKind.IMPULSE)),
    ]
    assert not coordinator.inside_checkpoint


@pytest.mark.parametrize(
    "name",
    [
        "count-replayable batch: 3 messages, 2 replayable",
        "upgrade take checkpoint",
        "take becoming-primary checkpoint",
        "upgrade service",
        "becoming primary",
    ],
)
def test_types_a_binding_may_not_send_are_refused(vectors: dict[str, Any], name: str) -> None:
    coordinator = end()
    with pytest.raises(BindingProtocolError, match="type"):
        coordinator.receive_data(vector(vectors, name))
    # Poisoned: a stream that was wrong once is never trusted again.
    with pytest.raises(BindingProtocolError):
        coordinator.receive_data(vector(vectors, "take checkpoint"))


def test_the_made_up_record_is_byte_exact_and_decodes_at_the_binding(
    vectors: dict[str, Any],
) -> None:
    (record,) = [r for r in vectors["log_records"] if r["sequence_id"] == -1]
    made = end().control_record(bytes.fromhex(record["body_hex"]))
    assert made == bytes.fromhex(record["hex"])
    assert BindingEnd(record_bytes_max=1 << 20).receive_data(made) == [
        ControlReceived(TakeBecomingPrimaryCheckpoint())
    ]


def test_a_page_reaches_the_binding_as_groups_with_their_senders() -> None:
    fork = encode(IncomingRpc(5, RpcKind.FORK, b"hello"))
    page = Page(
        epoch=1,
        sequence=7,
        groups=(
            InputGroup("server", 3, 2, 2, fork + fork),
            InputGroup("@impulses", 1, 1, 0, memoryview(fork)),
        ),
        trims=(),
        offset=0,
        size_bytes=0,
    )
    coordinator = end()
    data = coordinator.page_record(page) + coordinator.control_record(encode(TakeCheckpoint()))
    binding = BindingEnd(record_bytes_max=1 << 20)
    events = []
    for index in range(len(data)):
        events += binding.receive_data(data[index : index + 1])
    assert events == [
        PageReceived(7, (("server", fork + fork), ("@impulses", fork))),
        ControlReceived(TakeCheckpoint()),
    ]


def test_large_and_small_records_read_through_the_buffer_interface_in_any_split() -> None:
    """As a socket fills it (``get_buffer``/``buffer_updated``, as asyncio's buffered
    protocol does): a page over the large-record size is read into its own buffer, the
    small records before and after it and a checkpoint's bytes through the shared one,
    whatever the read sizes."""
    big = encode(IncomingRpc(5, RpcKind.FORK, bytes(range(256)) * 6000))  # ~1.5 MiB
    small = encode(IncomingRpc(5, RpcKind.FORK, b"s" * 40))

    def page(sequence: int, messages: bytes) -> Page:
        group = InputGroup("client", 1, 1, 1, messages)
        return Page(1, sequence, (group,), (), offset=0, size_bytes=0)

    coordinator = end()
    state = b"state" * 5000
    data = b"".join(
        (
            coordinator.page_record(page(1, small)),
            coordinator.page_record(page(2, big)),
            coordinator.page_record(page(3, small + small)),
            coordinator.checkpoint_record(len(state)),
            state,
            coordinator.control_record(encode(TakeCheckpoint())),
        )
    )
    expected = [
        PageReceived(1, (("client", small),)),
        PageReceived(2, (("client", big),)),
        PageReceived(3, (("client", small + small),)),
        CheckpointLoaded(state),
        ControlReceived(TakeCheckpoint()),
    ]
    for read in (7, 4096, 65536, 300_000, len(data)):
        binding = BindingEnd(record_bytes_max=8 << 20)
        events = []
        position = 0
        while position < len(data):
            with binding.get_buffer(-1) as view:
                count = min(read, len(view), len(data) - position)
                view[:count] = data[position : position + count]
            position += count
            events += binding.buffer_updated(count)
        assert events == expected, read


def test_a_checkpoint_record_carries_its_raw_bytes_after_it() -> None:
    coordinator = end()
    state = bytes(range(256)) * 3
    data = coordinator.checkpoint_record(len(state)) + state
    binding = BindingEnd(record_bytes_max=1 << 20)
    assert binding.receive_data(data[:30]) == []
    assert binding.receive_data(data[30:]) == [CheckpointLoaded(state)]


def test_a_binding_checkpoint_is_answered_with_its_bytes_whatever_the_split() -> None:
    state = b"x" * 1000
    events = feed_bytewise(end(), BindingEnd.checkpoint(state) + BindingEnd.take_checkpoint())
    assert events == [CheckpointReceived(state), CheckpointAsked()]


def test_the_binding_writes_outgoing_rpcs_the_coordinator_reads_back() -> None:
    incoming = encode(IncomingRpc(9, RpcKind.ASYNC, b"\x02args"))
    outgoing = outgoing_from_incoming(b"server", incoming)
    assert end().receive_data(outgoing) == [RpcReceived("server", incoming, int(RpcKind.ASYNC))]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff" * 11, "varint"),  # garbage: a size prefix that never ends
        (b"\x04\x63\x00", "type 99"),  # unknown type
        (b"\x00", "size 0"),  # a message of no bytes
        # An async call without its call id: a peer would refuse the batch holding it.
        (bytes.fromhex("16000c736572766572000000"), "RPC to server that would be refused"),
        # A reserved (negative) method id: system code, not the binding's to call.
        (outgoing_from_incoming(b"", encode(IncomingRpc(-1, RpcKind.FORK, b""))), "method"),
        # An impulse to someone else.
        (outgoing_from_incoming(b"peer", encode(IncomingRpc(3, RpcKind.IMPULSE, b""))), "self"),
    ],
)
def test_bad_input_is_one_typed_error_naming_what_was_wrong(data: bytes, reason: str) -> None:
    with pytest.raises(BindingProtocolError, match=reason):
        end().receive_data(data)


def test_a_checkpoint_over_the_limit_is_refused_when_announced() -> None:
    coordinator = end(checkpoint_bytes_max=100)
    with pytest.raises(BindingProtocolError, match="exceeds the limit of 100"):
        coordinator.receive_data(BindingEnd.checkpoint(b"y" * 101)[:4])


def test_a_disconnect_inside_a_checkpoint_or_a_message_is_an_error() -> None:
    coordinator = end()
    assert coordinator.receive_data(BindingEnd.checkpoint(b"z" * 50)[:20]) == []
    assert coordinator.inside_checkpoint
    with pytest.raises(BindingProtocolError, match="inside a checkpoint"):
        coordinator.receive_eof()
    coordinator = end()
    rpc = outgoing_from_incoming(b"", encode(IncomingRpc(5, RpcKind.FORK, b"hello")))
    assert coordinator.receive_data(rpc[:-1]) == []
    with pytest.raises(BindingProtocolError, match="inside a message"):
        coordinator.receive_eof()
    coordinator = end()
    assert coordinator.receive_data(rpc) != []
    coordinator.receive_eof()  # between messages: a clean end


def test_a_record_that_fails_its_check_bytes_is_refused_by_the_binding() -> None:
    data = bytearray(end().control_record(encode(TakeCheckpoint())))
    data[-1] ^= 1
    with pytest.raises(Exception, match="check bytes"):
        BindingEnd(record_bytes_max=1 << 20).receive_data(bytes(data))


def test_a_run_of_one_shape_is_taken_whole_and_a_mixed_run_one_by_one() -> None:
    fork = encode(IncomingRpc(5, RpcKind.FORK, b"0123456789abcdef"))
    tick = encode(IncomingRpc(7, RpcKind.IMPULSE, b"0123456789abcdef"))
    sent = [fork] * 50 + [tick] + [fork] * 3
    data = b"".join(outgoing_from_incoming(b"server" if m is fork else b"", m) for m in sent)
    events = end().receive_data(data)
    assert [(e.destination, e.count) for e in events if isinstance(e, RpcReceived)] == [
        ("server", 50),
        ("", 1),
        ("server", 3),
    ]
    assert b"".join(e.message for e in events if isinstance(e, RpcReceived)) == b"".join(sent)
    # Split anywhere, the same messages in the same order (runs end where the bytes do).
    bytewise = feed_bytewise(end(), data)
    assert b"".join(e.message for e in bytewise if isinstance(e, RpcReceived)) == b"".join(sent)
    assert sum(e.count for e in bytewise if isinstance(e, RpcReceived)) == len(sent)


def test_a_run_with_a_message_its_receiver_would_refuse_is_refused_at_that_message() -> None:
    good = encode(IncomingRpc(5, RpcKind.FORK, b"abc"))
    bad = encode(IncomingRpc(-3, RpcKind.FORK, b"abc"))  # a reserved method id
    data = b"".join(outgoing_from_incoming(b"server", m) for m in (good, good, bad))
    coordinator = end()
    with pytest.raises(BindingProtocolError, match="RPC to server"):
        coordinator.receive_data(data)


def test_the_coordinator_end_parses_only_bytes_received_never_stale_ones() -> None:
    """The socket reads straight into the end's buffer (``get_buffer``), whose free space
    holds whatever was there before. A size cut after its first byte, with bytes that
    were never received behind it, waits for the rest instead of reading them."""
    small = outgoing_from_incoming(b"server", encode(IncomingRpc(9, RpcKind.FORK, b"\x01" * 100)))
    assert small[0] >= 0x80  # a two-byte size
    coordinator = end()
    with coordinator.get_buffer(-1) as view:
        view[0] = small[0]
        view[1:6] = b"\xff" * 5  # not received: read, they would make a 6-byte varint
    assert coordinator.buffer_updated(1) == []
    events = coordinator.receive_data(small[1:])
    assert [(event.destination, event.count, len(event.message)) for event in events] == [
        ("server", 1, len(encode(IncomingRpc(9, RpcKind.FORK, b"\x01" * 100))))
    ]


def test_the_coordinator_end_receives_into_its_own_buffer_and_gives_a_large_one_back() -> None:
    """``get_buffer``/``buffer_updated`` as asyncio's BufferedProtocol calls them: room for
    a whole large message once its size is known, and the room given back after it."""
    payload = b"\x07" * (6 * 1024 * 1024)
    message = outgoing_from_incoming(b"", encode(IncomingRpc(3, RpcKind.FORK, payload)))
    coordinator = end(message_bytes_max=8 * 1024 * 1024)
    events: list[CoordinatorEvent] = []
    position = 0
    sizes = []
    while position < len(message):
        view = coordinator.get_buffer(-1)
        sizes.append(len(view))
        take = min(len(view), len(message) - position, 1 << 20)
        view[:take] = message[position : position + take]
        view.release()
        events += coordinator.buffer_updated(take)
        position += take
    assert [len(event.message) for event in events] == [len(message) - 1]
    assert max(sizes) >= len(message) - (1 << 20)  # the whole message fits once started
    with coordinator.get_buffer(-1) as view:
        assert len(view) < 8 * 1024 * 1024  # the 6 MiB room was given back


def test_a_large_page_record_comes_in_parts_hashed_as_they_are() -> None:
    """A record from 64 KiB on is sent as header, marker and the page's own bytes (no
    joined copy), a smaller one joined; either way the binding reads the same page."""
    big = encode(IncomingRpc(5, RpcKind.FORK, b"b" * 100_000))
    small = encode(IncomingRpc(5, RpcKind.FORK, b"s" * 40))
    groups = (
        InputGroup("client", 1, 1, 1, memoryview(big)),
        InputGroup("@impulses", 1, 1, 1, small),
    )
    page = Page(1, 9, groups, (), offset=0, size_bytes=0)
    coordinator = end()
    parts = coordinator.page_record_parts(page)
    assert len(parts) == 5 and parts[2] is groups[0].messages, [len(part) for part in parts]
    record = b"".join(bytes(part) for part in parts)
    assert record == coordinator.page_record(page)
    assert BindingEnd(record_bytes_max=1 << 20).receive_data(record) == [
        PageReceived(9, (("client", big), ("@impulses", small)))
    ]
    one = Page(1, 10, groups[1:], (), offset=0, size_bytes=0)
    (joined,) = coordinator.page_record_parts(one)
    assert BindingEnd(record_bytes_max=1 << 20).receive_data(joined) == [
        PageReceived(10, (("@impulses", small),))
    ]
