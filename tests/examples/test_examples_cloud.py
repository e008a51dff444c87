"""The forwarder and recorder examples, unchanged, on the cloud backends.

Azure Blob runs on Azurite, S3 on a moto server (session fixtures in tests/conftest.py);
the processes find endpoint and credentials in their environment, the log URL names a
fresh prefix per test, and ``--create-storage`` creates the container or bucket.

The checks are those of the file backend's example tests (exactly-once, in-order
delivery; deterministic replay of the forwarder's clock readings; the recorder's logged
impulses recovered after a SIGKILL), with fewer kills: a SIGKILLed process keeps its
cloud lease until the lease expires, so its successor waits up to one lease duration
(15 s at least on Azure Blob, 2 s here on S3). Each restart waits until the new process
is primary before the next kill, so that every kill hits a lease holder and not a
standby still waiting for the lease.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path

import pytest
from test_forwarder import epochs_with_input, sigkill
from test_recorder import run_recorder_scenario

from ambrosia.testing.harness import Deployment
from ambrosia.testing.replay import replay
from examples.forwarder.app import REPORT_EVERY, Forwarder, Sink, Source

pytestmark = [pytest.mark.crash, pytest.mark.emulator]

# Per backend: the lease duration a killed holder leaves behind, and the forwarder's
# victims (one kill on Azure Blob, where each costs a 15 s lease expiry).
LEASE_DURATION_S = {"azblob": 15, "s3": 2}
FORWARDER_VICTIMS = {"azblob": ("forwarder",), "s3": ("forwarder", "source", "forwarder")}
BACKENDS = ["azblob", "s3"]
# A liveness limit, on top of any lease expiry: each step takes a few seconds here.
LIVENESS_S = 60.0

MESSAGES = 6000
TICK_S = 0.05  # 100 messages per tick: about 3 s of sending, so the first kill lands mid-stream


@pytest.fixture(params=BACKENDS)
def cloud_log(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(backend, a log URL with a fresh prefix), the backend's environment set."""
    backend: str = request.param
    request.getfixturevalue(f"{backend}_env")
    return backend, f"{backend}://ambrosia-examples/run-{uuid.uuid4().hex[:12]}"


def run_args(backend: str) -> tuple[str, ...]:
    return (
        "--create-storage",
        "--store-option",
        f"lease_duration_s={LEASE_DURATION_S[backend]}",
        "--lease-wait-s",
        "60",
    )


def restart_timeout_s(backend: str) -> float:
    """Time for a restarted process to become primary: the lease expiry, and some."""
    return LEASE_DURATION_S[backend] + LIVENESS_S


def is_primary(deployment: Deployment, name: str) -> bool:
    return f"{name}: primary (" in deployment.output(name)


def test_forwarder_example_on_cloud(
    tmp_path: Path, cloud_log: tuple[str, str], example_env: dict[str, str]
) -> None:
    backend, log_url = cloud_log
    rng = random.Random(32)
    deployment = Deployment(
        tmp_path,
        log_url=log_url,
        env={**example_env, "FORWARDER_MESSAGES": str(MESSAGES), "FORWARDER_TICK_S": str(TICK_S)},
        # Keep every checkpoint, so the forwarder's log can be replayed from the start.
        run_args=("--checkpoints-kept", "100", *run_args(backend)),
    )
    names = ("sink", "forwarder", "source")
    for name in names:
        deployment.register(name, f"examples.forwarder.app:{name.capitalize()}")
        deployment.start(name)

    def sink_state() -> Sink:
        sink = asyncio.run(replay(log_url, "sink", Sink))
        assert isinstance(sink, Sink)
        return sink

    victims = FORWARDER_VICTIMS[backend]
    kills = 0
    try:
        # Creating the storage and taking the leases takes a while on a cloud store; the
        # sink's log has no checkpoint to replay from before it is primary.
        deployment.wait_for(
            lambda: all(is_primary(deployment, name) for name in names),
            LIVENESS_S,
            "every process to be primary",
        )
        deployment.wait_for(lambda: sink_state().received > 0, LIVENESS_S, "the first messages")
        for victim in victims:
            time.sleep(rng.uniform(0.1, 0.4))
            kills += sigkill(deployment, victim)
            deployment.start(victim)
            deployment.wait_for(
                lambda: is_primary(deployment, victim),  # noqa: B023 (called in the loop)
                restart_timeout_s(backend),
                f"the restarted {victim} to be primary",
            )
        deployment.wait_for(
            lambda: len(sink_state().reports) == MESSAGES // REPORT_EVERY,
            LIVENESS_S,
            "every report",
        )
        deployment.wait_for(
            lambda: all(is_primary(deployment, name) for name in names),
            LIVENESS_S,
            "every process to be up",
        )
        for name in names:
            assert deployment.terminate(name) == 0, deployment.output(name)
    finally:
        deployment.stop_all()
    assert kills == len(victims), "every SIGKILL must hit a running process"
    assert "lease taken" in deployment.outputs("forwarder")

    sink = sink_state()
    assert sink.out_of_order == []
    assert sink.received == MESSAGES
    numbers = [number for number, _ in sink.reports]
    assert numbers == list(range(1, MESSAGES // REPORT_EVERY + 1))
    elapsed = [elapsed_s for _, elapsed_s in sink.reports]
    # Each report read the clock afresh (no value logged once and repeated). No order is
    # asserted: a wall clock may be stepped back between reads; what must hold is that
    # replay reproduces these exact values (below).
    assert len(set(elapsed)) == len(elapsed), elapsed

    # The forwarder handled the stream in more than one life: the kill hit mid-stream.
    lives = asyncio.run(epochs_with_input(log_url, "forwarder", "source"))
    assert len(lives) >= 2, lives

    source = asyncio.run(replay(log_url, "source", Source))
    assert isinstance(source, Source)
    assert (source.total, source.sent) == (MESSAGES, MESSAGES)

    # Replaying re-runs every handler, reading today's clock, yet yields the same reports.
    for checkpoint in (0, None):
        forwarder = asyncio.run(replay(log_url, "forwarder", Forwarder, checkpoint=checkpoint))
        assert isinstance(forwarder, Forwarder)
        assert forwarder.count == MESSAGES
        assert forwarder.waiting == []
        assert forwarder.reports == elapsed


def test_recorder_example_on_cloud(
    tmp_path: Path, cloud_log: tuple[str, str], example_env: dict[str, str]
) -> None:
    """Lines logged before a SIGKILL come back from the cloud log after the restart."""
    backend, log_url = cloud_log
    deployment = Deployment(tmp_path, log_url=log_url, env=example_env, run_args=run_args(backend))
    run_recorder_scenario(
        deployment, start_timeout_s=LIVENESS_S, restart_timeout_s=restart_timeout_s(backend)
    )
