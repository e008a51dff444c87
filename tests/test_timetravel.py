"""Time travel and retroactive testing on a recorded run of the forwarder example.

One run of the three forwarder processes is recorded (every checkpoint kept, so the logs
replay from the first start); the tests replay it read-only: stop at a call, step into a
handler in pdb, and replay it with a changed version of the forwarder.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ambrosia import timetravel
from ambrosia.binding import state as state_codec
from ambrosia.testing import LoggedCall, Replay, open_replay, replay_test
from ambrosia.testing.harness import Deployment
from ambrosia.testing.replay import replay
from ambrosia.timetravel import debug
from examples.forwarder.app import REPORT_EVERY, Forwarder, Sink
from tests.apps.forwarder_v2 import ForwarderV2

pytestmark = pytest.mark.crash

MESSAGES = 2500
LIVENESS_S = 60.0
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    env = {
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "FORWARDER_MESSAGES": str(MESSAGES),
        "FORWARDER_TICK_S": "0.01",
    }
    deployment = Deployment(
        tmp_path_factory.mktemp("recorded"), env=env, run_args=("--checkpoints-kept", "100")
    )
    try:
        for name, cls in (("sink", "Sink"), ("forwarder", "Forwarder"), ("source", "Source")):
            deployment.register(name, f"examples.forwarder.app:{cls}")
            deployment.start(name)

        def sink() -> Sink:
            state = asyncio.run(replay(deployment.log_url, "sink", Sink))
            assert isinstance(state, Sink)
            return state

        def complete() -> bool:
            state = sink()
            return state.received == MESSAGES and len(state.reports) == MESSAGES // REPORT_EVERY

        # Every message and every report: the last report comes before the last messages.
        deployment.wait_for(complete, LIVENESS_S, "every message and report at the sink")
        names = ("source", "forwarder", "sink")
        deployment.wait_for(
            lambda: all(f"{name}: primary (" in deployment.output(name) for name in names),
            LIVENESS_S,
            "every process to be up",
        )
        for name in names:
            assert deployment.terminate(name) == 0, deployment.output(name)
    finally:
        deployment.stop_all()
    return deployment


def opened(deployment: Deployment, name: str, cls: type, checkpoint: int | None = 0) -> Replay:
    return asyncio.run(open_replay(deployment.log_url, name, cls, checkpoint=checkpoint))


def test_stop_at_call_k_holds_the_state_after_k_calls(recorded: Deployment) -> None:
    listing = io.StringIO()
    stop = debug(opened(recorded, "sink", Sink), print_calls=True, out=listing)
    assert stop is None
    calls = [line for line in listing.getvalue().splitlines() if line.startswith("#")]
    total = len(calls)
    assert total == 1 + MESSAGES + MESSAGES // REPORT_EVERY  # the first start, sends, reports
    assert calls[0].split()[5] == "on_first_start()"
    for k in (1, 700, 1800, total):
        replaying = opened(recorded, "sink", Sink)
        stop = debug(replaying, until_call=k, out=io.StringIO())
        assert stop is not None and stop.index == k
        sink = replaying.app
        assert isinstance(sink, Sink)
        first_k = calls[:k]
        assert sink.received == sum(" send(" in line for line in first_k)
        assert len(sink.reports) == sum(" report(" in line for line in first_k)
        assert sink.out_of_order == []
    # After every call, the state is the one the whole log replays to (from the latest
    # checkpoint, through the existing replayer).
    whole = asyncio.run(replay(recorded.log_url, "sink", Sink))
    assert state_codec.dump_attributes(sink) == state_codec.dump_attributes(whole)


def test_until_page_stops_before_the_first_later_page(recorded: Deployment) -> None:
    listing = io.StringIO()
    debug(opened(recorded, "sink", Sink), print_calls=True, out=listing)
    pages = sorted(
        {int(line.split()[2]) for line in listing.getvalue().splitlines() if line[:1] == "#"}
    )
    assert len(pages) >= 2
    replaying = opened(recorded, "sink", Sink)
    stop = debug(replaying, until_page=pages[0], out=io.StringIO())
    assert stop is not None and stop.page == pages[1]
    assert replaying.ran == sum(
        1
        for line in listing.getvalue().splitlines()
        if line[:1] == "#" and int(line.split()[2]) == pages[0]
    )


def test_break_runs_the_debugger_at_each_call_of_the_handler(recorded: Deployment) -> None:
    seen: list[tuple[LoggedCall, int]] = []

    def at(replaying: Replay, call: LoggedCall) -> None:
        sink = replaying.app
        assert isinstance(sink, Sink)
        seen.append((call, len(sink.reports)))

    debug(opened(recorded, "sink", Sink), break_at="Sink.report", debugger=at, out=io.StringIO())
    assert [call.method for call, _ in seen] == ["report"] * (MESSAGES // REPORT_EVERY)
    # The debugger runs before the call: the state does not hold that report yet.
    assert [reports for _, reports in seen] == list(range(MESSAGES // REPORT_EVERY))


def test_break_names_an_unknown_handler(recorded: Deployment) -> None:
    from ambrosia.errors import ConfigError

    with pytest.raises(ConfigError, match=r"Sink has no handler 'nope'.*report, send"):
        debug(opened(recorded, "sink", Sink), break_at="Sink.nope", out=io.StringIO())


def test_debug_command_stops_in_pdb_inside_the_handler(recorded: Deployment) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ambrosia.cli",
            "debug",
            "sink",
            "--app",
            "examples.forwarder.app:Sink",
            "--checkpoint",
            "0",
            "--break",
            "Sink.report",
        ],
        env=recorded.env,
        input="p ('number is', number)\np ('reports before', len(self.reports))\nq\n",
        capture_output=True,
        text=True,
        timeout=LIVENESS_S,
    )
    assert done.returncode == 0, done.stderr
    assert "break at #" in done.stdout
    assert "('number is', 1)" in done.stdout, done.stdout
    assert "('reports before', 0)" in done.stdout
    assert "debugger quit" in done.stdout


def test_debug_is_read_only_beside_a_running_primary(recorded: Deployment) -> None:
    """It takes no lease: it runs while the instance's lease is held."""
    from ambrosia.backends import open_store

    async def scenario() -> None:
        store = await open_store(recorded.log_url, "sink")
        lease = await store.acquire_lease()
        try:
            replaying = await open_replay(recorded.log_url, "sink", Sink, checkpoint=0)
            replaying.run_to_end()
            assert isinstance(replaying.app, Sink) and replaying.app.received == MESSAGES
        finally:
            await store.release_lease(lease)
            await store.close()

    asyncio.run(scenario())


def test_replay_test_finds_no_divergence_in_the_same_code(recorded: Deployment) -> None:
    """The forwarder reads the clock and forks it to itself (the time-carrying
    self-call): replay regenerates other times, which is not a divergence."""
    report = asyncio.run(replay_test(recorded.log_url, "forwarder", Forwarder, checkpoint=0))
    assert report.ok, report.describe()
    assert report.compared >= MESSAGES  # every message to the sink was compared
    assert report.unchecked == {}


def test_replay_test_reports_a_changed_call_at_its_position(recorded: Deployment) -> None:
    report = asyncio.run(replay_test(recorded.log_url, "forwarder", ForwarderV2, checkpoint=0))
    assert not report.ok
    divergence = report.divergence
    assert divergence is not None
    assert divergence.destination == "sink"
    assert divergence.call.method == "process" and "'message 1500'" in divergence.call.args
    assert divergence.recorded == "fork Sink.send('message 1500')"
    assert divergence.replayed == "fork Sink.send('MESSAGE 1500')"
    # Its number in the stream to the sink: the 1500th message, after the first report
    # unless that report's self-call was still on its way then.
    assert divergence.seq in (1500, 1501)
    assert divergence.call.kind == "fork" and divergence.call.source == "source"


@pytest.mark.parametrize(("app", "code"), [("Forwarder", 0), ("ForwarderV2", 1)])
def test_replay_test_command_exit_status(recorded: Deployment, app: str, code: int) -> None:
    module = "examples.forwarder.app" if app == "Forwarder" else "tests.apps.forwarder_v2"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ambrosia.cli",
            "replay-test",
            "forwarder",
            "--app",
            f"{module}:{app}",
            "--checkpoint",
            "0",
        ],
        env=recorded.env,
        capture_output=True,
        text=True,
        timeout=LIVENESS_S,
    )
    assert done.returncode == code, done.stdout + done.stderr
    if code:
        assert "divergence at #" in done.stdout and "MESSAGE 1500" in done.stdout
    else:
        assert "no divergence" in done.stdout


def test_replay_test_reads_a_peer_whose_oldest_checkpoint_is_pruned_meanwhile(
    recorded: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running peer takes a checkpoint and prunes its oldest one between the listing and
    the read of its log: the messages are read from the oldest one left, not reported as
    unreadable (a diverging upgrade test once passed that way, comparing nothing)."""
    log = tmp_path / "log"
    shutil.copytree(Path(recorded.log_url.removeprefix("file://")), log)
    listed = timetravel._oldest_checkpoint
    pruned: list[Path] = []

    async def listed_then_pruned(url: str, instance: str, options: Any) -> int | None:
        oldest = await listed(url, instance, options)
        if instance == "sink" and not pruned:
            pruned.append(log / "sink" / f"checkpoint-{oldest:08d}.ckpt")
            pruned[0].unlink()
        return oldest

    monkeypatch.setattr(timetravel, "_oldest_checkpoint", listed_then_pruned)
    report = asyncio.run(replay_test(f"file://{log}", "forwarder", ForwarderV2, checkpoint=0))
    assert pruned and not pruned[0].exists()
    assert report.unchecked == {}, report.describe()
    assert report.divergence is not None and report.divergence.destination == "sink"


def test_replay_test_that_could_not_compare_a_peer_is_incomplete_not_passed(
    recorded: Deployment, tmp_path: Path
) -> None:
    """The sink's log is gone: the diverging version cannot be caught, and the report
    says the test is incomplete (exit status 4) rather than passed."""
    log = tmp_path / "log"
    shutil.copytree(Path(recorded.log_url.removeprefix("file://")), log)
    shutil.rmtree(log / "sink")
    report = asyncio.run(replay_test(f"file://{log}", "forwarder", ForwarderV2, checkpoint=0))
    assert report.ok and not report.complete
    assert set(report.unchecked) == {"sink"}, report.describe()
    assert report.exit_status == 4
    text = report.describe()
    assert "not compared: messages to sink" in text and "incomplete" in text, text
    assert "no divergence" not in text, text
    whole = asyncio.run(replay_test(recorded.log_url, "forwarder", ForwarderV2, checkpoint=0))
    assert (whole.exit_status, whole.complete) == (1, True)
