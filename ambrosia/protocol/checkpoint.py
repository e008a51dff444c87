"""The checkpoint record: coordinator state plus the application's state bytes.

Checkpoint N is the state of the immortal after dispatching every page before
``resume_sequence``; recovery loads it and replays pages from ``resume_sequence`` on,
reading chunks from ``resume_chunk`` (which is N, or N - 1 when the page after the
snapshot was already on its way into the previous chunk).

Byte layout (little-endian)::

    0   4  magic b"AMBC"
    4   2  format version (1)
    6   4  header length H
    10  H  header: JSON (orjson) object, fields below
    ..     output segment bytes, back to back, in the order the header lists them
    ..     application state bytes (``app_bytes`` long)
    -8  8  xxh64 of every byte before it

Header fields: instance, number, epoch, resume_sequence, resume_chunk, inputs
({source: last delivered seq}), outputs ({destination: [next_seq, acked_through,
[[first_seq, count, byte length], ...]]}), binding (small dict from the dispatcher),
app_bytes; optional (absent in checkpoints written before replay was checked against
peers, and then unknown): input_digests ({source: CRC-32 of the framed messages 1..its
inputs mark}), output_digests ({destination: [CRC-32 of the framed messages 1..through,
through]}, ``through`` being the message before the first listed segment).

The checksum covers the whole record: a checkpoint is written whole and
read whole, so any damage means it cannot be used (recovery then says so; it never
guesses).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import orjson
import xxhash

from ambrosia.errors import LogCorruptError
from ambrosia.protocol.outputs import Segment

MAGIC = b"AMBC"
FORMAT_VERSION = 1
_HEAD = struct.Struct("<4sHI")
_TAIL = struct.Struct("<Q")


@dataclass(slots=True)
class OutputState:
    next_seq: int
    acked_through: int
    segments: list[Segment]
    # CRC-32 of messages 1..digest_through (``OutputStream.digest``); None: unknown.
    digest: int | None = None
    digest_through: int = 0


@dataclass(slots=True)
class CheckpointState:
    instance: str
    number: int
    epoch: int
    resume_sequence: int
    resume_chunk: int
    inputs: dict[str, int] = field(default_factory=dict)
    # CRC-32 of the messages 1..inputs[source] from each source; missing: unknown.
    input_digests: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, OutputState] = field(default_factory=dict)
    binding: dict[str, Any] = field(default_factory=dict)
    app: bytes = b""


def encode_checkpoint(state: CheckpointState) -> bytes:
    outputs: dict[str, Any] = {}
    output_digests: dict[str, list[int]] = {}
    blobs: list[bytes | bytearray] = []
    for destination, output in state.outputs.items():
        listed = []
        for segment in output.segments:
            listed.append([segment.first_seq, segment.count, len(segment.data)])
            blobs.append(segment.data)
        outputs[destination] = [output.next_seq, output.acked_through, listed]
        if output.digest is not None:
            output_digests[destination] = [output.digest, output.digest_through]
    header = orjson.dumps(
        {
            "instance": state.instance,
            "number": state.number,
            "epoch": state.epoch,
            "resume_sequence": state.resume_sequence,
            "resume_chunk": state.resume_chunk,
            "inputs": state.inputs,
            "outputs": outputs,
            "binding": state.binding,
            "app_bytes": len(state.app),
            "input_digests": state.input_digests,
            "output_digests": output_digests,
        }
    )
    parts = [_HEAD.pack(MAGIC, FORMAT_VERSION, len(header)), header, *blobs, state.app]
    body = b"".join(parts)
    return body + _TAIL.pack(xxhash.xxh64_intdigest(body))


def decode_checkpoint(data: bytes, where: str) -> CheckpointState:
    if len(data) < _HEAD.size + _TAIL.size:
        raise LogCorruptError(where, 0, f"checkpoint of {len(data)} bytes is too short")
    magic, version, header_length = _HEAD.unpack_from(data, 0)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise LogCorruptError(where, 0, f"not a checkpoint (magic {magic!r}, version {version})")
    (checksum,) = _TAIL.unpack_from(data, len(data) - _TAIL.size)
    view = memoryview(data)
    if xxhash.xxh64_intdigest(view[: len(data) - _TAIL.size]) != checksum:
        raise LogCorruptError(where, 0, "checkpoint checksum mismatch")
    cursor = _HEAD.size
    try:
        header = orjson.loads(view[cursor : cursor + header_length])
    except orjson.JSONDecodeError as error:
        raise LogCorruptError(where, cursor, f"checkpoint header: {error}") from error
    cursor += header_length
    outputs: dict[str, OutputState] = {}
    output_digests = header.get("output_digests", {})
    for destination, (next_seq, acked, listed) in header["outputs"].items():
        segments = []
        for first_seq, count, length in listed:
            segments.append(Segment(first_seq, count, bytes(view[cursor : cursor + length])))
            cursor += length
        output = OutputState(next_seq, acked, segments)
        if destination in output_digests:
            output.digest, output.digest_through = (int(v) for v in output_digests[destination])
        outputs[destination] = output
    app_end = cursor + header["app_bytes"]
    if app_end != len(data) - _TAIL.size:
        raise LogCorruptError(where, cursor, "checkpoint lengths do not add up")
    return CheckpointState(
        instance=header["instance"],
        number=header["number"],
        epoch=header["epoch"],
        resume_sequence=header["resume_sequence"],
        resume_chunk=header["resume_chunk"],
        inputs={str(k): int(v) for k, v in header["inputs"].items()},
        input_digests={str(k): int(v) for k, v in header.get("input_digests", {}).items()},
        outputs=outputs,
        binding=dict(header["binding"]),
        app=bytes(view[cursor:app_end]),
    )
