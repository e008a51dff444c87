"""The crash test and the counter example on the cloud backends, as real processes.

Azure Blob runs on Azurite, S3 on a moto server (session fixtures in tests/conftest.py).
The processes find endpoint and credentials in their environment, exactly as deployed
ones do; the log URL names a fresh prefix per test, and ``--create-storage`` creates the
container or bucket on first use.

A SIGKILLed process keeps its cloud lease until the lease expires (the kernel releases a
flock at once; a cloud service cannot know the holder died), so a restarted process
waits up to one lease duration. That costs at least 15 s per kill on Azure Blob (its
shortest lease) and 2 s here on S3 (the lease duration is ours to choose there), which
is why these runs kill less often than the file backend's crash test. The schedule
(``ambrosia.testing.crash``) kills a process only after its restart finished recovery,
so each kill hits a working primary, not one waiting for the dead holder's lease.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from pathlib import Path

import pytest

from ambrosia.testing.crash import CrashSettings, run_crash_scenario
from ambrosia.testing.harness import Deployment
from ambrosia.testing.replay import replay
from examples.counter.app import Client, Counter

pytestmark = [pytest.mark.crash, pytest.mark.emulator]

# tests/conftest.py put the repository root on this process's path; the processes of
# the example need it too.
REPOSITORY_ROOT = str(Path(__file__).resolve().parents[2])

# Per backend: the lease duration a killed holder leaves behind, and the kills afforded.
LEASE_DURATION_S = {"azblob": 15, "s3": 2}
KILLS = {"azblob": 2, "s3": 5}
BACKENDS = ["azblob", "s3"]


@pytest.fixture(params=BACKENDS)
def cloud_log(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(backend, a log URL with a fresh prefix), the backend's environment set."""
    backend: str = request.param
    request.getfixturevalue(f"{backend}_env")
    prefix = f"run-{uuid.uuid4().hex[:12]}"
    bucket = "ambrosia-crash"
    return backend, f"{backend}://{bucket}/{prefix}"


def _run_args(backend: str) -> tuple[str, ...]:
    return (
        "--create-storage",
        "--store-option",
        f"lease_duration_s={LEASE_DURATION_S[backend]}",
        "--lease-wait-s",
        "60",
    )


def test_crash_scenario_on_cloud(tmp_path: Path, cloud_log: tuple[str, str]) -> None:
    backend, log_url = cloud_log
    outcome = run_crash_scenario(
        tmp_path,
        log_url,
        seed=20261123,
        settings=CrashSettings(
            total_calls=700,
            kills=KILLS[backend],
            run_args=("--checkpoint-log-bytes", "65536", *_run_args(backend)),
            # Liveness limits: each kill may wait out a lease (15 s on Azure Blob).
            kills_timeout_s=45 + 2 * LEASE_DURATION_S[backend] * KILLS[backend],
            finish_timeout_s=45,
        ),
    )
    assert outcome.kills == KILLS[backend]
    assert outcome.audits >= outcome.kills
    assert "lease taken" in outcome.deployment.outputs("server")


def printed_values(deployment: Deployment, name: str) -> list[str]:
    return [line for line in deployment.outputs(name).splitlines() if line.strip().isdigit()]


def test_counter_example_on_cloud(
    tmp_path: Path, cloud_log: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counter prints 1 and 2 exactly once although its server is SIGKILLed."""
    backend, log_url = cloud_log
    rng = random.Random(7)
    paths = [REPOSITORY_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    deployment = Deployment(tmp_path, log_url=log_url, run_args=_run_args(backend))
    deployment.register("server", "examples.counter.app:Counter")
    deployment.register("client", "examples.counter.app:Client")
    try:
        deployment.start("client")
        deployment.start("server")
        # Kill the server while the client's calls are in flight or being answered;
        # the client is never killed, so its printed lines are exactly what it handled.
        deployment.wait_for(
            lambda: "lease taken" in deployment.output("server"), 30, "the server's lease"
        )
        time.sleep(rng.uniform(0.0, 0.3))
        deployment.kill("server")
        deployment.start("server")
        deployment.wait_for(
            lambda: "2" in printed_values(deployment, "client"), 40, "the client to print 2"
        )
        assert printed_values(deployment, "client") == ["1", "2"]
        assert deployment.terminate("client") == 0
        assert deployment.terminate("server") == 0
    finally:
        deployment.stop_all()
    client = asyncio.run(replay(log_url, "client", Client))
    assert isinstance(client, Client) and client.results == [1, 2]
    server = asyncio.run(replay(log_url, "server", Counter))
    assert isinstance(server, Counter) and server.count == 2
