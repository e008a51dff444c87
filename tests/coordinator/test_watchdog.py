"""A handler that never returns: SIGTERM still ends the process, and the handler is named.

First, in one process: a real dispatcher, run on a thread of its own, is stuck in a
handler (it waits on an event) while the test reads that thread's stack the way the
watchdog does. Then real ``ambrosia run`` processes and real signals (issue 8, case 9).
``tests/apps/stuck.py``
has a server whose ``stuck`` handler never returns (a CPU loop or a long sleep) and a
feeder that sends it three calls, the stuck one, and three more, in one batch. Before the
fix SIGTERM did nothing (the stop callback waited on the event loop the handler held),
nothing said which handler was stuck, and every restart hung again in replay.

Deadlines are generous and only bound how long a test may wait; no test asserts how fast
anything happened, except that a second signal ends the process long before its grace.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ambrosia import Immortal, rpc
from ambrosia.binding import codec
from ambrosia.binding.dispatcher import Dispatcher, frame_prefix, rpc_header
from ambrosia.binding.immortal import method_table
from ambrosia.protocol.outputs import OutputStream
from ambrosia.testing.harness import Deployment
from ambrosia.watchdog import EXIT_FORCED_BASE, HandlerWatchdog, running_handler
from ambrosia.wire.messages import KIND_FORK

APPS_DIRECTORY = Path(__file__).resolve().parents[1] / "apps"
WARNING_S = 0.5
GRACE_S = 1.0
GRACE_LONG_S = 600.0  # longer than any test: only a second signal can end the process
WAIT_S = 60.0  # a liveness limit: a process start, a warning or an exit take ~1 s here
EXIT_FORCED_SIGTERM = EXIT_FORCED_BASE + signal.SIGTERM

# records 1..3 are calls 1..3 from the feeder; the stuck call is call 4.
STUCK_CALL = r"handler Stuck\.stuck on call 4 from feeder, log page \d+"
STUCK_LIVE = re.compile(rf"WARNING .*server: {STUCK_CALL}, now at \S*stuck\.py:\d+ in Stuck\.stuck")
STUCK_IN_REPLAY = re.compile(rf"WARNING .*server: {STUCK_CALL}, during replay, now at ")
FORCED_EXIT = re.compile(
    rf"server: exiting at once with code {EXIT_FORCED_SIGTERM} after (.*?): {STUCK_CALL}"
)


# -- in one process: reading a stuck dispatcher's stack ----------------------------------------


class Blocking(Immortal):
    """Handlers that wait for the test's event: stuck for as long as the test wants."""

    release = threading.Event()

    @rpc
    def quick(self, payload: bytes) -> None:
        pass

    @rpc
    def wait_raw(self, payload: bytes) -> None:
        self._wait()

    @rpc
    async def wait_async(self, n: int) -> None:
        self._wait()

    def _wait(self) -> None:
        assert Blocking.release.wait(WAIT_S), "the test never released the handler"


def fork_message(name: str, *args: Any) -> bytes:
    body = (
        b"\x00" + args[0] if len(args) == 1 and type(args[0]) is bytes else codec.encode_args(args)
    )
    header = rpc_header(method_table(Blocking)[name].method_id, KIND_FORK)
    return frame_prefix(len(header) + len(body)) + header + body


def unbounded_stream(destination: str) -> OutputStream:
    return OutputStream(
        destination,
        buffer_bytes_max=1 << 30,
        batch_bytes_max=1 << 30,
        on_dirty=lambda stream: None,
        on_blocked=lambda stream: None,
        on_unblocked=lambda stream: None,
    )


def dispatch_on_a_thread(group: bytes, *, replaying: bool) -> threading.Thread:
    """Dispatch ``group`` (page 7, calls 40.. from ``peer``) on a thread of its own."""
    dispatcher = Dispatcher("blocking", Blocking(), unbounded_stream, lambda message: None)
    dispatcher.replaying = replaying
    dispatcher.page_sequence = 7
    dispatcher.group_first_seq = 40
    thread = threading.Thread(target=dispatcher.dispatch, args=("peer", group, 0, len(group)))
    Blocking.release.clear()
    thread.start()
    return thread


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.mark.parametrize(
    ("stuck_message", "handler_name"),
    [
        # one raw bytes argument: called straight from ``dispatch``'s fast path
        (fork_message("wait_raw", b"x"), "Blocking.wait_raw"),
        # a coroutine handler with decoded arguments: ``_dispatch_fork``, then ``_drive``
        (fork_message("wait_async", 3), "Blocking.wait_async"),
    ],
    ids=["plain", "coroutine"],
)
@pytest.mark.parametrize("replaying", [False, True], ids=["live", "replay"])
def test_the_stack_names_the_running_handler_and_its_call(
    stuck_message: bytes, handler_name: str, replaying: bool
) -> None:
    group = fork_message("quick", b"a") + fork_message("quick", b"b") + stuck_message
    thread = dispatch_on_a_thread(group, replaying=replaying)
    try:
        assert thread.ident is not None
        ident = thread.ident
        wait_until(lambda: running_handler(ident) is not None, "the handler to run")
        running = running_handler(ident)
        assert running is not None
        assert running.name == handler_name  # the handler, not ``Blocking._wait`` it called
        assert running.innermost.f_code.co_filename == threading.__file__  # the event's wait
        assert (running.call.source, running.call.seq, running.call.page_sequence) == (
            "peer",
            42,
            7,
        )
        assert running.call.replaying is replaying
        assert "call 42 from peer, log page 7" in running.describe()
    finally:
        Blocking.release.set()
        thread.join()


def test_the_watchdog_names_a_handler_that_runs_too_long(
    caplog: pytest.LogCaptureFixture,
) -> None:
    group = fork_message("quick", b"a") + fork_message("wait_raw", b"x")
    thread = dispatch_on_a_thread(group, replaying=True)
    assert thread.ident is not None
    watchdog = HandlerWatchdog(warning_after_s=0.2, thread_id=thread.ident)
    caplog.set_level(logging.WARNING, logger="ambrosia.watchdog")
    watchdog.start()
    try:
        wait_until(lambda: watchdog.warnings > 0, "a warning")
    finally:
        Blocking.release.set()
        thread.join()
        watchdog.stop()
    assert re.search(
        r"blocking: handler Blocking\.wait_raw on call 41 from peer, log page 7, during "
        r"replay, now at \S*threading\.py:\d+ in \S+ has been running for",
        caplog.text,
    ), caplog.text


# -- real processes, real signals --------------------------------------------------------------


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


@pytest.mark.crash
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


@pytest.mark.crash
def test_acknowledged_calls_survive_a_forced_exit_and_sigterm_stops_cleanly(
    deployment: Deployment,
) -> None:
    deployment.start("server", args=coordinator_options(grace_s=GRACE_S))
    deployment.start("feeder")
    stuck = deployment.status_dir / "server.stuck"
    deployment.wait_for(stuck.exists, WAIT_S, "the server stuck in its handler")
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
