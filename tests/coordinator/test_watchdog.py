"""A handler that never returns: SIGTERM still ends the process, and the handler is named.

Real ``ambrosia run`` processes, real signals (issue 8, case 9). ``tests/apps/stuck.py``
has a server whose ``stuck`` handler never returns (a CPU loop or a long sleep) and a
feeder that sends it three calls, the stuck one, and three more, in one batch. Before the
fix SIGTERM did nothing (the stop callback waited on the event loop the handler held),
nothing said which handler was stuck, and every restart hung again in replay.

Deadlines are generous and only bound how long a test may wait; no test asserts how fast
anything happened, except that a second signal ends the process long before its grace.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ambrosia.coordinator.watchdog import EXIT_FORCED_BASE
from ambrosia.testing.harness import Deployment

pytestmark = pytest.mark.crash

APPS_DIRECTORY = Path(__file__).resolve().parents[1] / "apps"
WARNING_S = 0.5
GRACE_S = 1.0
GRACE_LONG_S = 600.0  # longer than any test: only a second signal can end the process
WAIT_S = 20.0  # generous: a process start, a warning or an exit, on a loaded machine
EXIT_FORCED_SIGTERM = EXIT_FORCED_BASE + signal.SIGTERM

# records 1..3 are calls 1..3 from the feeder; the stuck call is call 4.
STUCK_CALL = r"handler Stuck\.stuck on call 4 from feeder, log page \d+"
STUCK_LIVE = re.compile(rf"WARNING .*server: {STUCK_CALL}, now at \S*stuck\.py:\d+ in Stuck\.stuck")
STUCK_IN_REPLAY = re.compile(rf"WARNING .*server: {STUCK_CALL}, during replay, now at ")
FORCED_EXIT = re.compile(
    rf"server: exiting at once with code {EXIT_FORCED_SIGTERM} after (.*?): {STUCK_CALL}"
)


def coordinator_options(*, grace_s: float) -> tuple[str, ...]:
    return (
        "--coordinator-option",
        f"handler_warning_s={WARNING_S}",
        "--coordinator-option",
        f"shutdown_grace_s={grace_s}",
    )


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    path = os.pathsep.join(p for p in (str(APPS_DIRECTORY), os.environ.get("PYTHONPATH")) if p)
    deployment = Deployment(tmp_path, env={"PYTHONPATH": path})
    deployment.register("server", "stuck:Stuck")
    deployment.register("feeder", "stuck:Feeder")
    try:
        yield deployment
    finally:
        deployment.stop_all()


def wait_for_line(deployment: Deployment, label: str, pattern: re.Pattern[str]) -> None:
    deployment.wait_for(
        lambda: pattern.search(deployment.output(label)) is not None,
        WAIT_S,
        f"{pattern.pattern!r} in the output of {label}",
    )


def exit_code(deployment: Deployment, label: str) -> int | None:
    """Wait up to ``WAIT_S`` for ``label`` to end; its exit code, None if it did not."""
    process = deployment.processes[label]
    deadline = time.monotonic() + WAIT_S
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return process.poll()


def recorded(deployment: Deployment) -> list[int] | None:
    status = deployment.status("server")
    return None if status is None else list(status["numbers"])


@pytest.mark.parametrize("how", ["spin", "sleep"])
def test_sigterm_ends_a_stuck_handler_which_is_named_live_and_in_replay(
    deployment: Deployment, how: str
) -> None:
    deployment.start("server", args=coordinator_options(grace_s=GRACE_S))
    deployment.start("feeder", env={"STUCK_HOW": how})
    wait_for_line(deployment, "server", STUCK_LIVE)

    # The clean stop cannot run while the handler holds the loop: the grace runs out.
    assert deployment.terminate("server", timeout_s=WAIT_S) == EXIT_FORCED_SIGTERM
    forced = FORCED_EXIT.search(deployment.output("server"))
    assert forced is not None, deployment.output("server")[-3000:]
    assert "clean stop did not finish" in forced.group(1)

    # The call is in the log: replay runs into it again, and says so.
    deployment.start("server", args=coordinator_options(grace_s=GRACE_LONG_S))
    wait_for_line(deployment, "server", STUCK_IN_REPLAY)
    process = deployment.processes["server"]
    process.send_signal(signal.SIGTERM)
    wait_for_line(deployment, "server", re.compile(r"server: SIGTERM: stopping"))
    process.send_signal(signal.SIGTERM)
    assert exit_code(deployment, "server") == EXIT_FORCED_SIGTERM
    forced = FORCED_EXIT.search(deployment.output("server"))
    assert forced is not None, deployment.output("server")[-3000:]
    assert "a second signal" in forced.group(1)


def test_acknowledged_calls_survive_a_forced_exit_and_sigterm_stops_cleanly(
    deployment: Deployment,
) -> None:
    deployment.start("server", args=coordinator_options(grace_s=GRACE_S))
    deployment.start("feeder")
    wait_for_line(deployment, "server", STUCK_LIVE)
    # The calls after the stuck one were acknowledged with it (one batch). With the
    # feeder gone, the server's own log is the only place they can come from.
    deployment.kill("feeder")
    assert deployment.terminate("server", timeout_s=WAIT_S) == EXIT_FORCED_SIGTERM

    fixed = {"STUCK_FIXED": "1"}
    deployment.start("server", args=coordinator_options(grace_s=GRACE_S), env=fixed)
    deployment.wait_for(
        lambda: recorded(deployment) == list(range(1, 8)), WAIT_S, "calls 1..7 recorded"
    )
    # Nothing stuck: SIGTERM is a clean stop, exit code 0, no forced exit.
    assert deployment.terminate("server", timeout_s=WAIT_S) == 0
    output = deployment.output("server")
    assert "server: SIGTERM: stopping" in output
    assert "exiting at once" not in output
    assert "has been running for" not in output
