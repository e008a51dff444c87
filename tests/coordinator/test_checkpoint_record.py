"""The checkpoint record: exact round trip, and any damage is LogCorruptError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ambrosia.errors import LogCorruptError
from ambrosia.protocol.checkpoint import (
    CheckpointState,
    OutputState,
    decode_checkpoint,
    encode_checkpoint,
)
from ambrosia.protocol.outputs import Segment

names = st.text(min_size=1, max_size=12)
seqs = st.integers(0, 2**62)
segments = st.builds(
    Segment,
    seqs,
    st.integers(1, 1000),
    st.one_of(st.binary(max_size=64), st.binary().map(bytearray)),
)
outputs = st.builds(OutputState, seqs, seqs, st.lists(segments, max_size=4))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
states = st.builds(
    CheckpointState,
    instance=names,
    number=st.integers(0, 2**40),
    epoch=st.integers(0, 2**40),
    resume_sequence=st.integers(0, 2**40),
    resume_chunk=st.integers(0, 2**40),
    inputs=st.dictionaries(names, seqs, max_size=4),
    outputs=st.dictionaries(names, outputs, max_size=4),
    binding=st.dictionaries(st.text(max_size=10), json_values, max_size=4),
    app=st.binary(max_size=200),
)


def normalized(state: CheckpointState) -> CheckpointState:
    """What decoding gives back: segment data as bytes (a bytearray is written the same)."""
    return CheckpointState(
        instance=state.instance,
        number=state.number,
        epoch=state.epoch,
        resume_sequence=state.resume_sequence,
        resume_chunk=state.resume_chunk,
        inputs=dict(state.inputs),
        outputs={
            destination: OutputState(
                output.next_seq,
                output.acked_through,
                [Segment(s.first_seq, s.count, bytes(s.data)) for s in output.segments],
            )
            for destination, output in state.outputs.items()
        },
        binding=dict(state.binding),
        app=bytes(state.app),
    )


@settings(max_examples=200, deadline=None)
@given(states)
def test_round_trip(state: CheckpointState) -> None:
    data = encode_checkpoint(state)
    decoded = decode_checkpoint(data, "checkpoint 1")
    assert decoded == normalized(state)
    assert list(decoded.outputs) == list(state.outputs)
    for output in decoded.outputs.values():
        for segment in output.segments:
            assert type(segment.data) is bytes


@settings(max_examples=100, deadline=None)
@given(states, st.data())
def test_any_flipped_byte_is_corruption(state: CheckpointState, data: st.DataObject) -> None:
    encoded = bytearray(encode_checkpoint(state))
    index = data.draw(st.integers(0, len(encoded) - 1), label="index")
    flip = data.draw(st.integers(1, 255), label="xor")
    encoded[index] ^= flip
    with pytest.raises(LogCorruptError) as raised:
        decode_checkpoint(bytes(encoded), "chunk-dir/checkpoint 7")
    assert raised.value.where == "chunk-dir/checkpoint 7"


def test_every_single_byte_flip_and_every_truncation_is_corruption() -> None:
    state = CheckpointState(
        instance="server",
        number=3,
        epoch=2,
        resume_sequence=41,
        resume_chunk=2,
        inputs={"client": 17, "@impulses": 2},
        outputs={
            "client": OutputState(
                9, 5, [Segment(6, 2, b"\x04ab\x04cd"), Segment(8, 2, b"\x02x\x02y")]
            )
        },
        binding={"next_call_id": 12, "started": True},
        app=b"\x01application state",
    )
    encoded = encode_checkpoint(state)
    assert decode_checkpoint(encoded, "c") == state
    for index in range(len(encoded)):
        for flip in (0x01, 0x80, 0xFF):
            damaged = bytearray(encoded)
            damaged[index] ^= flip
            with pytest.raises(LogCorruptError):
                decode_checkpoint(bytes(damaged), "c")
    for length in range(len(encoded)):
        with pytest.raises(LogCorruptError):
            decode_checkpoint(encoded[:length], "c")
    with pytest.raises(LogCorruptError):
        decode_checkpoint(encoded + b"\x00", "c")
