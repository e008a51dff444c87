"""What a primary checks before it adopts a checkpointer's candidate (``verify_candidate``)
and the checkpointer's status object, on real encoded checkpoints."""

from __future__ import annotations

import dataclasses

import pytest

from ambrosia.coordinator.checkpointer import (
    CandidateRefusedError,
    CheckpointerStatus,
    decode_status,
    verify_candidate,
)
from ambrosia.errors import NotFoundError
from ambrosia.protocol.checkpoint import (
    CheckpointState,
    OutputState,
    decode_checkpoint,
    encode_checkpoint,
)


def candidate(**changes: object) -> bytes:
    state = CheckpointState(
        instance="server",
        number=5,
        epoch=2,
        resume_sequence=120,
        resume_chunk=5,
        inputs={"client": 40},
        outputs={"client": OutputState(10, 9, [])},
        binding={"next_call_id": 3},
        app=b"state" * 100,
    )
    return encode_checkpoint(dataclasses.replace(state, **changes))  # type: ignore[arg-type]


def announced(data: bytes, **changes: object) -> CheckpointerStatus:
    status = CheckpointerStatus(
        replica_id="vm-7",
        pid=7,
        host="vm",
        replayed_sequence=130,
        updated=1.0,
        candidate=5,
        candidate_resume_sequence=120,
        candidate_bytes=len(data),
        candidate_xxh64=int.from_bytes(data[-8:], "little"),
    )
    return dataclasses.replace(status, **changes)  # type: ignore[arg-type]


def verify(data: bytes, status: CheckpointerStatus, **overrides: int | str) -> CheckpointState:
    arguments: dict[str, int | str] = {
        "instance": "server",
        "number": 5,
        "first_sequence": 110,
        "next_sequence": 140,
    }
    arguments.update(overrides)
    return verify_candidate(
        data,
        announced=status,
        where="candidate 5",
        **arguments,  # type: ignore[arg-type]
    )


def test_a_good_candidate_is_accepted() -> None:
    data = candidate()
    state = verify(data, announced(data))
    assert (state.number, state.resume_sequence, state.app) == (5, 120, b"state" * 100)


@pytest.mark.parametrize(
    ("data", "overrides", "reason"),
    [
        (candidate(instance="other"), {}, "a checkpoint of 'other', not 'server'"),
        (candidate(number=6), {}, "numbered 6, not 5"),
        (candidate(resume_chunk=4), {}, "resumes in chunk 4, not 5"),
        (candidate(resume_sequence=100), {}, "outside chunk 5 (its first page is 110"),
        (candidate(resume_sequence=141), {}, "the next page written is 140"),
    ],
)
def test_a_candidate_for_another_place_is_refused(
    data: bytes, overrides: dict[str, int], reason: str
) -> None:
    # Announced as it is: only the place is wrong.
    status = announced(data, candidate_resume_sequence=decode_checkpoint(data, "t").resume_sequence)
    with pytest.raises(CandidateRefusedError, match=reason.replace("(", r"\(")):
        verify(data, status, **overrides)


def test_a_damaged_or_partial_candidate_is_refused() -> None:
    data = candidate()
    flipped = data[:40] + bytes([data[40] ^ 0xFF]) + data[41:]
    with pytest.raises(CandidateRefusedError, match="checkpoint checksum mismatch"):
        verify(flipped, announced(flipped))
    with pytest.raises(CandidateRefusedError, match="where the checkpointer announced"):
        verify(data[: len(data) // 2], announced(data))
    other = candidate(app=b"other")
    with pytest.raises(CandidateRefusedError, match="checksum 0x"):
        verify(other, announced(data, candidate_bytes=len(other)))
    with pytest.raises(CandidateRefusedError, match="the checkpointer announced 121"):
        verify(data, announced(data, candidate_resume_sequence=121))


def test_status_round_trips_and_garbage_is_no_status() -> None:
    status = announced(candidate(), version=3)
    assert decode_status(status.encode()) == status
    assert decode_status(b"{") is None
    assert decode_status(b'{"pid": 1}') is None
    assert decode_status(b"x" * 5000) is None


class StatusArea:
    """A candidate area as the primary sees it: only the status is read, and counted."""

    def __init__(self) -> None:
        self.reads = 0
        self.status: bytes | None = None

    async def write_candidate(self, name: str, data: bytes) -> None:
        raise AssertionError("the primary writes no candidate")

    async def read_candidate(self, name: str) -> bytes:
        self.reads += 1
        if self.status is None:
            raise NotFoundError(name)
        return self.status

    async def remove_candidate(self, name: str) -> None:
        raise AssertionError("the primary removes nothing here")


def test_a_primary_without_a_checkpointer_reads_the_status_ever_less_often() -> None:
    """Each status read is a billed request on a cloud store: with no checkpointer the
    primary backs off, and reads every ``checkpointer_check_s`` again once one appears."""
    import asyncio
    import types

    from ambrosia.coordinator import checkpointer

    async def scenario() -> None:
        area = StatusArea()
        runtime = types.SimpleNamespace(
            instance="server",
            replica_id="vm-1",
            config=types.SimpleNamespace(checkpointer_check_s=0.01),
        )
        adopter = checkpointer.Adopter(runtime, area)  # type: ignore[arg-type]
        adopter.start()
        await asyncio.sleep(1.0)
        absent_reads = area.reads
        # 0.01 s apart would be about 100 reads; doubling pauses make about 7.
        assert 2 <= absent_reads <= 12, absent_reads
        status = announced(candidate())
        area.status = dataclasses.replace(status, replica_id="vm-2").encode()
        # The next read, at most one (doubled) pause later, finds it ...
        await asyncio.sleep(1.5)
        assert adopter.status is not None and adopter.status.replica_id == "vm-2"
        # ... and from then on it is read every checkpointer_check_s again.
        found_reads = area.reads
        await asyncio.sleep(0.5)
        await adopter.stop()
        assert area.reads - found_reads >= 10, area.reads - found_reads

    asyncio.run(scenario())


def test_a_checkpointer_started_during_the_back_off_takes_the_next_checkpoint() -> None:
    """Before each checkpoint with no checkpointer known, the primary reads the status once
    more (not when it read it within ``checkpointer_check_s``, nor once one is known): a
    checkpointer started while the reads were backed off for seconds is asked for the
    very next checkpoint, not one up to ``ABSENT_CHECK_S_MAX`` later."""
    import asyncio
    import types

    from ambrosia.coordinator import checkpointer

    async def scenario() -> None:
        area = StatusArea()
        runtime = types.SimpleNamespace(
            instance="server",
            replica_id="vm-1",
            code_version=0,
            delivered_sequence=0,
            config=types.SimpleNamespace(
                checkpointer_check_s=0.05,
                checkpointer_silent_s=5.0,
                checkpointer_lag_pages_max=10_000,
            ),
        )
        adopter = checkpointer.Adopter(runtime, area)  # type: ignore[arg-type]
        adopter.start()
        # 0.1 + 0.2 + 0.4 + 0.8 s: the loop's next read is 1.6 s away.
        await asyncio.sleep(1.6)
        assert adopter.delegate_reason() == "no checkpointer has announced itself"
        status = dataclasses.replace(announced(candidate()), replica_id="vm-2", version=0)
        area.status = dataclasses.replace(status, updated=1.0).encode()
        reads = area.reads
        await adopter.refresh_if_stale()
        assert area.reads == reads + 1
        assert adopter.delegate_reason() is None, adopter.delegate_reason()
        # Known now: the checkpoint reads nothing more (the loop reads it every 0.05 s).
        await adopter.stop()
        reads = area.reads
        await adopter.refresh_if_stale()
        assert area.reads == reads
        # Gone, and read a moment ago: no second read for the next checkpoint either.
        area.status = None
        await adopter.refresh()
        reads = area.reads
        await adopter.refresh_if_stale()
        assert area.reads == reads

    asyncio.run(scenario())
