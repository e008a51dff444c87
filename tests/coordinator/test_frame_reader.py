"""The link receiver's read buffer (``FrameReader``): every frame comes out whole and in
order however the stream is cut, the buffer stays within its bound, and a stream of
large frames is not copied inside the buffer once per frame."""

from __future__ import annotations

import random

import pytest

from ambrosia.coordinator.links import _GROWN_BYTES_MAX, FrameReader
from ambrosia.errors import FrameTooLargeError
from ambrosia.wire.varint import encode_zigzag_int

MiB = 1 << 20


class CountingReader(FrameReader):
    """Counts the bytes ``compact`` moves (the copies this buffer makes by itself)."""

    moved = 0

    def compact(self) -> None:
        self.moved += self.end - self.start
        super().compact()


def frame(body: bytes) -> bytes:
    return bytes(encode_zigzag_int(len(body))) + body


def feed(reader: FrameReader, stream: bytes, reads: list[int]) -> list[bytes]:
    """Deliver ``stream`` as a socket would: each read fills at most the buffer offered
    and at most the next size in ``reads``; frames are taken as soon as they are whole."""
    frames: list[bytes] = []
    position = 0
    turn = 0
    while position < len(stream):
        view = reader.get_buffer()
        count = min(len(view), reads[turn % len(reads)], len(stream) - position)
        turn += 1
        assert count > 0, "the reader offered no room"
        view[:count] = stream[position : position + count]
        del view
        reader.end += count
        position += count
        while (body := reader.next_frame()) is not None:
            frames.append(bytes(body))
            del body
    return frames


def test_large_frames_are_moved_a_fraction_of_a_time_and_stay_bounded() -> None:
    """1 MiB frames (a data batch of 64 KiB calls) arriving in socket-sized reads."""
    rng = random.Random(7)
    bodies = [rng.randbytes(MiB - rng.randrange(64)) for _ in range(40)]
    stream = b"".join(frame(body) for body in bodies)
    reader = CountingReader(16 * MiB)
    sizes: list[int] = []
    original = reader.get_buffer

    def watched() -> memoryview:
        view = original()
        sizes.append(len(reader.buffer))
        return view

    reader.get_buffer = watched  # type: ignore[method-assign]
    assert feed(reader, stream, [200_000, 1_000_000, 64 * 1024, 3 * MiB]) == bodies
    # Moved at most a quarter of what was received (it was about as much again when the
    # buffer held one frame and the unread start of the next moved on every frame).
    assert reader.moved < len(stream) / 4, (reader.moved, len(stream))
    assert max(sizes) <= max(4 * MiB + 64, _GROWN_BYTES_MAX)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_frames_of_every_size_come_out_whole_and_in_order(seed: int) -> None:
    rng = random.Random(seed)
    bodies = [rng.randbytes(rng.choice([1, 30, 5000, 70_000, 300_000, 2 * MiB])) for _ in range(60)]
    stream = b"".join(frame(body) for body in bodies)
    reader = FrameReader(4 * MiB)
    reads = [rng.randrange(1, 3 * MiB) for _ in range(50)]
    assert feed(reader, stream, reads) == bodies
    assert len(reader.buffer) <= max(4 * MiB + 16, _GROWN_BYTES_MAX)
    reader.shrink()
    assert len(reader.buffer) == 64 * 1024


def test_small_frames_keep_the_small_buffer() -> None:
    bodies = [bytes([n % 251]) * 100 for n in range(20_000)]
    reader = FrameReader(16 * MiB)
    assert feed(reader, b"".join(frame(body) for body in bodies), [70_000]) == bodies
    assert len(reader.buffer) == 64 * 1024


def test_a_frame_over_the_limit_is_refused_before_it_is_buffered() -> None:
    reader = FrameReader(MiB)
    with pytest.raises(FrameTooLargeError):
        feed(reader, frame(bytes(MiB + 1)), [64 * 1024])
    assert len(reader.buffer) == 64 * 1024
