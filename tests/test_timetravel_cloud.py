"""Time travel on the cloud stores: `ambrosia debug` and `ambrosia replay-test` read a log
on s3 (a moto server) and on azblob (Azurite) as they read a local one.

A short chain run is recorded with every checkpoint kept; the commands then replay the
server's log from checkpoint 0, read-only, as a developer would from their machine.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ambrosia.testing.harness import Deployment

pytestmark = [pytest.mark.crash, pytest.mark.emulator]

TOTAL = 120
LIVENESS_S = 60.0
CALL_LINE = re.compile(r"^#(\d+) page (\d+) client#(\d+) (fork|async) record(?:_fork)?\((\d+)\)$")


@pytest.fixture(params=["s3", "azblob"])
def recorded(tmp_path: Path, request: pytest.FixtureRequest) -> Deployment:
    backend: str = request.param
    request.getfixturevalue(f"{backend}_env")
    deployment = Deployment(
        tmp_path,
        log_url=f"{backend}://ambrosia-debug/run-{uuid.uuid4().hex[:12]}",
        env={"AMBROSIA_CHAIN_TOTAL": str(TOTAL)},
        run_args=("--create-storage", "--checkpoints-kept", "1000"),
    )
    deployment.register("server", "ambrosia.testing.workloads:ChainServer")
    deployment.register("client", "ambrosia.testing.workloads:ChainClient")
    try:
        deployment.start("server")
        deployment.start("client")

        def done() -> bool:
            client = deployment.status("client")
            server = deployment.status("server")
            return bool(client and client["done"]) and bool(server and server["count"] >= TOTAL)

        deployment.wait_for(done, LIVENESS_S, "every call of the chain")
        for name in ("client", "server"):
            assert deployment.terminate(name) == 0, deployment.output(name)
    finally:
        deployment.stop_all()
    return deployment


def ambrosia(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ambrosia.cli", *args],
        env=deployment.env,
        input="",
        capture_output=True,
        text=True,
        timeout=LIVENESS_S,
    )


def test_debug_lists_and_stops_at_a_call_on_a_cloud_log(recorded: Deployment) -> None:
    # It stops in pdb after call 25; standard input is empty, so pdb quits at once.
    done = ambrosia(
        recorded, "debug", "server", "--checkpoint", "0", "--print-calls", "--until-call", "25"
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    calls = [match for line in lines if (match := CALL_LINE.match(line))]
    # The chain's calls in their order, record(1), record(2), ..., each from the client
    # (among the first 25 calls of the log; the first start is the server's own).
    numbers = [int(match.group(5)) for match in calls]
    assert len(numbers) >= 20 and numbers == list(range(1, len(numbers) + 1)), done.stdout
    assert [int(match.group(1)) for match in calls] == sorted(int(m.group(1)) for m in calls)
    assert any(line.startswith("stopped after call #25: ") for line in lines), done.stdout


def test_replay_test_of_the_same_code_on_a_cloud_log_finds_nothing(recorded: Deployment) -> None:
    done = ambrosia(
        recorded,
        "replay-test",
        "server",
        "--app",
        "ambrosia.testing.workloads:ChainServer",
        "--checkpoint",
        "0",
    )
    assert done.returncode == 0, done.stdout + done.stderr
