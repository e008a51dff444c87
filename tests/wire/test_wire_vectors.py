"""The codec against the byte-exact vectors shared with the protocol description.

The vectors live outside the project (``<repo>/../shared/vectors/``) and are read at test
time. Where that folder is absent the tests skip, except under CI, where a missing file
means the conformance check silently did not run: that must fail.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ambrosia.testing.skips import skip_unless_ci
from ambrosia.wire import (
    CheckpointChunk,
    CheckpointComplete,
    CheckpointHeader,
    CountReplayableRpcBatch,
    Direction,
    IncomingRpc,
    InitialMessage,
    LogRecordDecoder,
    MessageDecoder,
    MessageType,
    OutgoingRpc,
    RpcBatch,
    decode_log_record,
    decode_message,
    decode_messages,
    decode_zigzag_int,
    decode_zigzag_long,
    encode,
    encode_log_record,
    encode_zigzag_int,
    encode_zigzag_long,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
VECTORS_PATH = REPO_ROOT.parent / "shared" / "vectors" / "binding-protocol.json"


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    if not VECTORS_PATH.is_file():
        skip_unless_ci(
            f"protocol test vectors not found at {VECTORS_PATH} "
            "(they live beside the project, not in it)"
        )
    loaded: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    return loaded


def test_varint32_vectors(vectors: dict[str, Any]) -> None:
    assert vectors["varint32"]
    for vector in vectors["varint32"]:
        encoded = bytes.fromhex(vector["hex"])
        assert decode_zigzag_int(encoded, 0) == (vector["value"], len(encoded))
        assert encode_zigzag_int(vector["value"]) == encoded
        # Also at an offset inside a larger mutable buffer.
        assert decode_zigzag_int(bytearray(b"\xff" + encoded), 1) == (
            vector["value"],
            len(encoded) + 1,
        )


def test_varint64_vectors(vectors: dict[str, Any]) -> None:
    assert vectors["varint64"]
    for vector in vectors["varint64"]:
        encoded = bytes.fromhex(vector["hex"])
        assert decode_zigzag_long(memoryview(encoded), 0) == (vector["value"], len(encoded))
        assert encode_zigzag_long(vector["value"]) == encoded


def _directions(fields: dict[str, Any]) -> list[Direction]:
    """Which directions a vector is valid in, from its fields alone."""
    message_type = fields["type"]
    if message_type == MessageType.RPC:
        if "destination" in fields:
            return [Direction.BINDING_TO_COORDINATOR]
        return [Direction.COORDINATOR_TO_BINDING]
    if message_type == MessageType.ATTACH_TO:
        return [Direction.BINDING_TO_COORDINATOR]
    if message_type in (MessageType.RPC_BATCH, MessageType.COUNT_REPLAYABLE_RPC_BATCH):
        # The vectors' batches hold incoming RPCs (no destination).
        return [Direction.COORDINATOR_TO_BINDING]
    if message_type in (
        MessageType.UPGRADE_TAKE_CHECKPOINT,
        MessageType.TAKE_BECOMING_PRIMARY_CHECKPOINT,
        MessageType.UPGRADE_SERVICE,
        MessageType.BECOMING_PRIMARY,
    ):
        return [Direction.COORDINATOR_TO_BINDING]
    return [Direction.BINDING_TO_COORDINATOR, Direction.COORDINATOR_TO_BINDING]


def _check_fields(message: object, fields: dict[str, Any], direction: Direction) -> None:
    assert message.message_type == fields["type"]  # type: ignore[attr-defined]
    if isinstance(message, OutgoingRpc):
        assert message.destination == fields["destination"]
    if isinstance(message, OutgoingRpc | IncomingRpc):
        assert message.method_id == fields["method_id"]
        assert message.rpc_kind == fields["rpc_kind"]
        assert message.args == bytes.fromhex(fields["args_hex"])
        assert message.reserved == fields.get("reserved", 0)
    if "destination" in fields and not isinstance(message, OutgoingRpc):
        assert message.destination == fields["destination"]  # type: ignore[attr-defined]
    if isinstance(message, RpcBatch | CountReplayableRpcBatch):
        assert len(message.rpcs) == fields["count"]
        expected = [
            decode_message(bytes.fromhex(inner), direction) for inner in fields["messages_hex"]
        ]
        assert list(message.rpcs) == expected
    if isinstance(message, CountReplayableRpcBatch):
        assert message.replayable_count == fields["replayable_count"]
    if isinstance(message, CheckpointHeader):
        assert message.length == fields["checkpoint_length"]
    if isinstance(message, InitialMessage):
        assert message.data == bytes.fromhex(fields["data_hex"])


def test_message_vectors(vectors: dict[str, Any]) -> None:
    seen_types = set()
    for vector in vectors["messages"]:
        fields = vector["fields"]
        stream = bytes.fromhex(vector["hex"])
        for direction in _directions(fields):
            decoder = MessageDecoder(direction)
            decoder.feed(stream)
            decoder.feed_eof()
            events = list(decoder)
            message = events[0]
            _check_fields(message, fields, direction)
            seen_types.add(fields["type"])
            encoded = encode(message)  # type: ignore[arg-type]
            if isinstance(message, CheckpointHeader):
                raw = b"".join(e.data for e in events if isinstance(e, CheckpointChunk))
                assert raw == bytes.fromhex(fields["followed_by_hex"])
                assert events[-1] == CheckpointComplete(message.length)
                assert encoded + raw == stream
            else:
                assert events == [message], vector["name"]
                assert encoded == stream, vector["name"]
                assert decode_message(stream, direction) == message
    # Every type the vectors claim to cover was actually exercised.
    assert seen_types == {vector["fields"]["type"] for vector in vectors["messages"]}


def test_log_record_vectors(vectors: dict[str, Any]) -> None:
    assert vectors["log_records"]
    stream = b""
    records = []
    for vector in vectors["log_records"]:
        encoded = bytes.fromhex(vector["hex"])
        body = bytes.fromhex(vector["body_hex"])
        record = decode_log_record(encoded)
        assert record.committer_id == vector["committer_id"]
        assert record.sequence_id == vector["sequence_id"]
        assert list(record.messages) == decode_messages(body, Direction.COORDINATOR_TO_BINDING)
        assert encode_log_record(record.committer_id, record.sequence_id, body) == encoded
        assert b"".join(encode(message) for message in record.messages) == body
        stream += encoded
        records.append(record)
    # The same records through the streaming decoder, one byte at a time.
    decoder = LogRecordDecoder()
    events = []
    for index in range(len(stream)):
        decoder.feed(stream[index : index + 1])
        events.extend(decoder)
    decoder.feed_eof()
    events.extend(decoder)
    assert events == records
