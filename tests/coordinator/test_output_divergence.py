"""Replay checked against the peers: output that differs from what they hold stops it.

Real processes (``ambrosia run``), a real SIGKILL, a real restart. The roller awaits
``Dice.roll`` again and again; the dice server is killed in the middle and restarted.
Returning ``random.random()`` cannot be replayed: the restarted server regenerates other
results than the ones the roller holds, and must say so and stop, naming the method,
instead of running on with a state the roller never saw. The same kill of a server that
keeps its time through the paper's self-call idiom recovers and finishes the run.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ambrosia.testing.harness import Deployment

pytestmark = pytest.mark.crash

APPS_DIRECTORY = Path(__file__).resolve().parents[1] / "apps"
WAIT_S = 60.0  # a liveness limit: a start, a recovery or an exit take ~1 s here
KILL_AFTER_RESULTS = 20
DETERMINISTIC = {"DICE_DETERMINISTIC": "1"}


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    path = os.pathsep.join(p for p in (str(APPS_DIRECTORY), os.environ.get("PYTHONPATH")) if p)
    deployment = Deployment(tmp_path, env={"PYTHONPATH": path})
    deployment.register("dice", "dice:Dice")
    deployment.register("roller", "dice:Roller")
    try:
        yield deployment
    finally:
        deployment.stop_all()


def results(deployment: Deployment) -> int:
    status = deployment.status("roller")
    return 0 if status is None else int(status["results"])


def run_then_kill_the_server(
    deployment: Deployment, env: dict[str, str], args: tuple[str, ...] = ()
) -> None:
    deployment.start("dice", env=env, args=args)
    deployment.start("roller")
    deployment.wait_for(
        lambda: results(deployment) >= KILL_AFTER_RESULTS, WAIT_S, "the first results"
    )
    deployment.kill("dice")


def test_a_random_result_is_caught_at_the_first_recovery(deployment: Deployment) -> None:
    run_then_kill_the_server(deployment, {})
    process = deployment.start("dice")
    deadline = time.monotonic() + WAIT_S
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    output = deployment.output("dice")
    assert process.poll() not in (None, 0), output[-3000:]
    found = re.search(r"dice: replay diverged from what roller received[^\n]*", output)
    assert found is not None, output[-3000:]
    error = found.group(0)
    # Named: the instance, the peer, the page and call being replayed, the method.
    assert re.search(r"handling call \d+ from roller, log page \d+, during replay", error), error
    assert "Dice.roll" in error, error
    assert re.search(r"ERROR ambrosia\.host: dice stopped: dice: replay diverged", output)


def test_a_random_result_from_a_binding_process_is_caught(deployment: Deployment) -> None:
    """``--separate``: the handlers run in a binding process; the coordinator checks the
    output it gets from there the same way (which call made it is known only there)."""
    run_then_kill_the_server(deployment, {}, ("--separate",))
    process = deployment.start("dice", args=("--separate",))
    deadline = time.monotonic() + WAIT_S
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    output = deployment.output("dice")
    assert process.poll() not in (None, 0), output[-3000:]
    found = re.search(r"dice: replay diverged from what roller received[^\n]*", output)
    assert found is not None, output[-3000:]
    where = r"regenerated during replay by the binding process, at or before log page \d+"
    assert re.search(where, found.group(0)), found.group(0)


def test_a_deterministic_server_recovers_and_is_checked(deployment: Deployment) -> None:
    run_then_kill_the_server(deployment, DETERMINISTIC)
    deployment.start("dice", env=DETERMINISTIC)
    deployment.wait_for(
        lambda: results(deployment) >= 200, WAIT_S, "every result after the recovery"
    )
    output = deployment.output("dice")
    # The check ran (it is not merely absent) and found the replay matching.
    assert re.search(r"dice: output to roller through message \d+ matches", output), output[-3000:]
    assert "diverged" not in output
    assert deployment.log_findings() == []
