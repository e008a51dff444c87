"""The counter example with real processes and SIGKILLs: results [1, 2], count 2, always.

Kill moments are random, but chosen so that the printed output can be checked exactly:
the client is only killed while it cannot be handling a result (before the server was
ever started, or a while after the server was killed), because a kill between a result
becoming durable and its handler printing it loses the line on the terminal (the value
is still applied, during replay; see the example's README). The server is killed at
random moments and right after its log grows, which is when the client's calls are in
flight or being answered.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from ambrosia.testing.harness import Deployment
from ambrosia.testing.replay import replay
from examples.counter.app import Client, Counter

pytestmark = pytest.mark.crash

FIRST_START_LOG_BYTES = 100  # a chunk holding only the first-start page is smaller


def printed_values(deployment: Deployment, name: str) -> list[str]:
    """Lines that are just a number, across every run of ``name``, in run order."""
    values = []
    for run in range(1, deployment.starts.get(name, 0) + 1):
        text = (deployment.directory / f"{name}.{run}.log").read_text(errors="replace")
        values += [line for line in text.splitlines() if line.strip().isdigit()]
    return values


def log_bytes(deployment: Deployment, name: str) -> int:
    return sum(
        path.stat().st_size for path in (deployment.directory / "log" / name).glob("chunk-*")
    )


def sigkill(deployment: Deployment, name: str) -> int:
    """SIGKILL ``name``; 1 if it was running (a kill that landed), else 0."""
    running = deployment.processes[name].poll() is None
    deployment.kill(name)
    return int(running)


# A liveness limit: the whole scenario, six kills included, takes about 3 s here.
LIVENESS_S = 60.0


def is_up(deployment: Deployment, name: str) -> bool:
    """The current run of ``name`` has recovered and serves (its coordinator said so)."""
    return f"{name}: primary (" in deployment.output(name)


def wait_until(predicate: object, timeout_s: float) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.001)
    return False


def run_counter_scenario(directory: Path, env: dict[str, str], seed: int) -> None:
    rng = random.Random(seed)
    deployment = Deployment(directory, env=env)
    deployment.register("server", "examples.counter.app:Counter")
    deployment.register("client", "examples.counter.app:Client")
    kills = 0
    try:
        # The client alone: its first inc() stays pending. Kill it during start-up or
        # while it waits, and start it again.
        deployment.start("client")
        for _ in range(2):
            time.sleep(rng.uniform(0.05, 0.8))
            kills += sigkill(deployment, "client")
            deployment.start("client")
        # The server comes up; kill it as soon as its log grows past its own first
        # start (the client's first call is logged, its result may not be out yet).
        deployment.start("server")
        grew = wait_until(
            lambda: log_bytes(deployment, "server") > FIRST_START_LOG_BYTES, LIVENESS_S
        )
        assert grew, deployment.output("server")
        kills += sigkill(deployment, "server")
        # With the server down, nothing can reach the client: kill it too.
        time.sleep(0.3)
        kills += sigkill(deployment, "client")
        deployment.start("client")
        deployment.start("server")
        # Then kill the server at random moments, while the client recovers and calls.
        for _ in range(2):
            time.sleep(rng.uniform(0.0, 0.6))
            kills += sigkill(deployment, "server")
            time.sleep(rng.uniform(0.0, 0.2))
            deployment.start("server")

        def finished() -> bool:
            return "2" in printed_values(deployment, "client")

        deployment.wait_for(finished, LIVENESS_S, "the client to print 2")
        assert printed_values(deployment, "client") == ["1", "2"]
        # A process still starting up has no SIGTERM handler yet; let both come up.
        deployment.wait_for(
            lambda: all(is_up(deployment, name) for name in ("client", "server")),
            LIVENESS_S,
            "both processes to be up",
        )
        assert deployment.terminate("client") == 0
        assert deployment.terminate("server") == 0
    finally:
        deployment.stop_all()
    assert kills == 6, "every SIGKILL must hit a running process"

    client = asyncio.run(replay(deployment.log_url, "client", Client))
    assert isinstance(client, Client)
    assert client.results == [1, 2]
    server = asyncio.run(replay(deployment.log_url, "server", Counter))
    assert isinstance(server, Counter)
    assert server.count == 2


@pytest.mark.parametrize("seed", [7, 2026])
def test_counter_survives_sigkills(tmp_path: Path, example_env: dict[str, str], seed: int) -> None:
    run_counter_scenario(tmp_path, example_env, seed)
