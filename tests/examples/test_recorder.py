"""The recorder example: lines from standard input through an impulse, across SIGKILLs.

A real process is fed through a pipe. Lines logged before a SIGKILL come back after the
restart from the log (the new process's standard input never carries them), and an
impulse sent while recovering is refused (a unit-level check on the real dispatcher).
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from ambrosia.binding.dispatcher import Dispatcher
from ambrosia.errors import ImpulseDuringRecoveryError
from ambrosia.inspect import describe_log
from ambrosia.protocol.outputs import OutputStream
from ambrosia.testing.harness import Deployment
from ambrosia.testing.replay import replay
from examples.recorder.app import Recorder

IMPULSES = "@impulses"


def listing(title: str, lines: list[str]) -> str:
    return "\n".join([title, *(f"  {line}" for line in lines)]) + "\n"


# A liveness limit: each step (a start, a line recorded, a recovery) takes about a second
# here, even on a loaded 2-core machine.
LIVENESS_S = 60.0


def type_line(process: subprocess.Popen[bytes], line: str) -> None:
    assert process.stdin is not None
    process.stdin.write(f"{line}\n".encode())
    process.stdin.flush()


def run_recorder_scenario(
    deployment: Deployment,
    *,
    start_timeout_s: float = LIVENESS_S,
    restart_timeout_s: float = LIVENESS_S,
) -> str:
    """Type lines, SIGKILL, restart: logged lines come back by replay. Returns the log report.

    Shared by the file-backend test here and the cloud-backend runs, which differ only in
    the log URL and in how long a restart may wait for the killed holder's lease.
    """
    deployment.register("recorder", "examples.recorder.app:Recorder")

    def shows(text: str) -> bool:
        return text in deployment.output("recorder")

    try:
        first = deployment.start("recorder", stdin=subprocess.PIPE)
        deployment.wait_for(lambda: shows("recovered 0 line(s):\n"), start_timeout_s, "the start")
        type_line(first, "apples")
        expected = listing("recorded input:", ["apples"])
        deployment.wait_for(lambda: shows(expected), LIVENESS_S, "apples")
        type_line(first, "pears")
        expected = listing("recorded input:", ["apples", "pears"])
        deployment.wait_for(lambda: shows(expected), LIVENESS_S, "pears")
        deployment.kill("recorder")
        assert first.stdin is not None
        first.stdin.close()

        second = deployment.start("recorder", stdin=subprocess.PIPE)
        recovered = listing("recovered 2 line(s):", ["apples", "pears"])
        deployment.wait_for(
            lambda: shows(recovered), restart_timeout_s, "recovery of the logged lines"
        )
        type_line(second, "plums")
        expected = listing("recorded input:", ["apples", "pears", "plums"])
        deployment.wait_for(lambda: shows(expected), LIVENESS_S, "plums")
        # End of input ends the pump, not the immortal.
        assert second.stdin is not None
        second.stdin.close()
        assert second.poll() is None
        assert deployment.terminate("recorder") == 0
        output = deployment.output("recorder")
        # Replayed lines are not printed again one by one.
        assert output.count("recorded input:") == 1, output
    finally:
        deployment.stop_all()

    recorder = asyncio.run(replay(deployment.log_url, "recorder", Recorder))
    assert isinstance(recorder, Recorder)
    assert recorder.lines == ["apples", "pears", "plums"]
    report = asyncio.run(describe_log(deployment.log_url, "recorder", pages=True))
    assert f"    {IMPULSES}: 3\n" in report  # three impulses logged, in all
    assert f"group {IMPULSES} 1..1: 1 message(s), 0 replayable" in report
    return report


@pytest.mark.crash
def test_recorder_keeps_logged_lines_across_sigkill(
    tmp_path: Path, example_env: dict[str, str]
) -> None:
    run_recorder_scenario(Deployment(tmp_path, env=example_env))


# -- unit level: the real dispatcher, no process -----------------------------------------


def open_stream(destination: str) -> OutputStream:
    return OutputStream(
        destination,
        buffer_bytes_max=1 << 20,
        batch_bytes_max=1 << 20,
        on_dirty=lambda stream: None,
        on_blocked=lambda stream: None,
        on_unblocked=lambda stream: None,
    )


def recorder_with_dispatcher() -> tuple[Recorder, Dispatcher, list[bytes]]:
    logged: list[bytes] = []
    recorder = Recorder()
    return recorder, Dispatcher("recorder", recorder, open_stream, logged.append), logged


def test_impulse_during_recovery_is_refused() -> None:
    recorder, dispatcher, logged = recorder_with_dispatcher()
    # Recovering: not primary yet (the runtime replays before it becomes primary).
    dispatcher.replaying = True
    with pytest.raises(ImpulseDuringRecoveryError):
        recorder.this.accept_input.impulse("typed during recovery")
    # Primary but still replaying is refused too.
    dispatcher.is_primary = True
    with pytest.raises(ImpulseDuringRecoveryError):
        recorder.this.accept_input.impulse("typed during recovery")
    assert logged == []
    assert recorder.lines == []


def test_impulse_logged_when_primary_then_replayed() -> None:
    recorder, dispatcher, logged = recorder_with_dispatcher()
    dispatcher.is_primary = True
    recorder.this.accept_input.impulse("apples")
    # Logged, not run: the handler only runs when the log hands the message back.
    assert len(logged) == 1
    assert recorder.lines == []
    message = logged[0]
    assert dispatcher.dispatch(IMPULSES, message, 0, len(message)) == len(message)
    assert recorder.lines == ["apples"]

    # Recovery of a new process: the logged impulse replays; a new one is refused.
    recovered, replaying, relogged = recorder_with_dispatcher()
    replaying.replaying = True
    assert replaying.dispatch(IMPULSES, message, 0, len(message)) == len(message)
    assert recovered.lines == ["apples"]
    with pytest.raises(ImpulseDuringRecoveryError):
        recovered.this.accept_input.impulse("pears")
    assert relogged == []
