"""The recovery plan, without an event loop: checkpoint and pages in, marks out."""

from __future__ import annotations

from ambrosia.log.page import InputGroup, Page
from ambrosia.protocol.checkpoint import CheckpointState
from ambrosia.protocol.recovery_plan import kept_checkpoints, plan_recovery


def page(sequence: int, groups: list[tuple[str, int, int]], trims: list[tuple[str, int]]) -> Page:
    return Page(
        1,
        sequence,
        tuple(InputGroup(source, first, count, count, b"") for source, first, count in groups),
        tuple(trims),
        offset=0,
        size_bytes=0,
    )


def checkpoint(number: int = 3, **fields: object) -> CheckpointState:
    settings: dict[str, object] = {
        "instance": "server",
        "number": number,
        "epoch": 1,
        "resume_sequence": 40,
        "resume_chunk": number,
        "inputs": {"client": 100, "server": 7},
    }
    settings.update(fields)
    return CheckpointState(**settings)  # type: ignore[arg-type]


def test_marks_move_past_every_page_and_the_checkpoint_keeps_what_it_delivered() -> None:
    pages = [
        (0, page(40, [("client", 101, 5), ("other", 1, 2)], [("client", 30)])),
        (0, page(41, [("client", 106, 1)], [("client", 25), ("other", 4)])),
        (1, page(42, [("server", 8, 2)], [])),
    ]
    loaded = checkpoint()
    plan = plan_recovery(loaded, pages)
    assert plan.marks.accepted == {"client": 106, "server": 9, "other": 2}
    assert plan.marks.trims == {"client": 30, "other": 4}, "the highest trim, not the last"
    assert plan.delivered == {"client": 100, "server": 7}
    assert plan.delivered is not loaded.inputs and plan.marks.accepted is not loaded.inputs
    assert (plan.delivered_sequence, plan.next_sequence) == (39, 43)


def test_a_checkpoint_with_no_pages_after_it_resumes_at_its_own_sequence() -> None:
    plan = plan_recovery(checkpoint(resume_sequence=12), [])
    assert (plan.delivered_sequence, plan.next_sequence) == (11, 12)
    assert plan.marks.accepted == {"client": 100, "server": 7}
    assert plan.marks.delivered == {"client": 100, "server": 7}
    assert plan.marks.trims == {}


def test_kept_checkpoints_drop_unusable_and_newer_ones_and_keep_the_newest() -> None:
    loaded = checkpoint(number=6, resume_chunk=5)
    listed = [0, 2, 3, 4, 6, 7]
    assert kept_checkpoints(loaded, listed, [3], keep=10) == [(0, 0), (2, 1), (4, 3), (6, 5)]
    assert kept_checkpoints(loaded, listed, [3], keep=2) == [(4, 3), (6, 5)]
    assert kept_checkpoints(loaded, [], [], keep=1) == [(6, 5)]
