"""The crash scenario, parametrized: a chain workload under random SIGKILLs, then checks.

A ``ChainClient`` sends calls 1..N to a ``ChainServer`` (see ``ambrosia.testing.workloads``)
while the harness SIGKILLs the client, the server or both at random moments (seeded) and
starts them again. Afterwards: the server saw exactly 1..N in order (hash chain), the
client got every awaited result exactly once, both stop cleanly, retention kept only the
last checkpoints, and an offline replay of each log from its checkpoint rebuilds the
same state.

Some kills are aimed rather than random (``checkpoint_double_kills``): the server is
killed the moment its output shows "checkpoint N written" (often before any page reached
chunk N, so checkpoint N resumes in a chunk that is no longer the newest one the log
will have), restarted, and killed again during that recovery (right after it takes the
lease, or right after it becomes primary, before its first checkpoint). That is the
pair of kills that once left a log its own recovery refused.

The parameters exist for the backends: a cloud store's lease outlives a SIGKILLed holder
(the restarted process waits for it to expire), so a run there affords fewer kills, and a
fault-injection run gives each process start its own environment (its fault seed).
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ambrosia.backends import open_store
from ambrosia.testing.harness import Deployment
from ambrosia.testing.replay import replay
from ambrosia.testing.workloads import ChainClient, ChainServer, expected_chain, is_async_call

__all__ = ["CrashOutcome", "CrashSettings", "run_crash_scenario"]

StartEnvironment = Callable[[str, int], dict[str, str]]


@dataclass(frozen=True, slots=True)
class CrashSettings:
    total_calls: int = 4000
    kills: int = 12
    pause_s: tuple[float, float] = (0.2, 1.2)  # between kills
    restart_delay_s: tuple[float, float] = (0.0, 0.3)  # between a kill and the restart
    run_args: tuple[str, ...] = ("--checkpoint-log-bytes", "65536")
    kills_timeout_s: float = 240.0
    finish_timeout_s: float = 120.0
    # Before each kill, wait until the client made progress since the last one: on a
    # store whose lease outlives a killed holder, a kill during the restarted process's
    # lease wait would test nothing.
    progress_between_kills: bool = False
    checkpoints_kept: int = 2  # what the processes run with (``--checkpoints-kept``)
    check_retention: bool = True
    # Aimed double kills of the server (module docstring), each counted as two kills.
    checkpoint_double_kills: int = 0


@dataclass(frozen=True, slots=True)
class CrashOutcome:
    deployment: Deployment
    kills: int
    server_status: dict[str, Any]
    client_status: dict[str, Any]


async def _checkpoints(log_url: str, instance: str) -> list[int]:
    store = await open_store(log_url, instance)
    try:
        return await store.list_checkpoints()
    finally:
        await store.close()


def _client_sent(deployment: Deployment) -> int:
    status = deployment.status("client")
    return int(status["sent"]) if status is not None else 0


def _client_progressed(deployment: Deployment, sent_before: int) -> bool:
    return _client_sent(deployment) > sent_before


_CHECKPOINT_WRITTEN = re.compile(r": checkpoint \d+ written")
_DURING_RECOVERY = (": lease taken, epoch ", ": primary (replayed ")
_POLL_S = 0.001


def _poll(
    deployment: Deployment, condition: Callable[[], bool], deadline: float, what: str
) -> None:
    """Wait for ``condition`` at a millisecond's pace (an aimed kill must land at once)."""
    while not condition():
        assert time.monotonic() < deadline, f"crash scenario took too long waiting for {what}"
        process = deployment.processes.get("server")
        assert process is not None and process.poll() is None, deployment.output("server")[-3000:]
        time.sleep(_POLL_S)


def _double_kill(
    deployment: Deployment, start: Callable[[str], None], deadline: float, marker: str
) -> None:
    """Kill the server right after "checkpoint N written", then again during recovery."""
    written = len(_CHECKPOINT_WRITTEN.findall(deployment.output("server")))

    def checkpointed() -> bool:
        return len(_CHECKPOINT_WRITTEN.findall(deployment.output("server"))) > written

    _poll(deployment, checkpointed, deadline, "a checkpoint to kill after")
    deployment.kill("server")
    start("server")
    _poll(deployment, lambda: marker in deployment.output("server"), deadline, marker)
    deployment.kill("server")
    start("server")


def run_crash_scenario(
    directory: Path,
    log_url: str | None,
    seed: int,
    *,
    settings: CrashSettings | None = None,
    env: dict[str, str] | None = None,
    start_env: StartEnvironment | None = None,
) -> CrashOutcome:
    """Run the scenario; AssertionError with the evidence when exactly-once is broken.

    ``start_env(name, start_number)`` gives extra environment for one process start.
    """
    settings = settings or CrashSettings()
    total = settings.total_calls
    rng = random.Random(seed)
    deployment = Deployment(
        directory,
        log_url=log_url,
        env={"AMBROSIA_CHAIN_TOTAL": str(total), **(env or {})},
        run_args=settings.run_args,
    )

    def start(name: str) -> None:
        extra = start_env(name, deployment.starts.get(name, 0) + 1) if start_env else None
        deployment.start(name, env=extra)

    deployment.register("server", "ambrosia.testing.workloads:ChainServer")
    deployment.register("client", "ambrosia.testing.workloads:ChainClient")
    try:
        start("server")
        start("client")
        kills = 0
        aimed = 0
        deadline = time.monotonic() + settings.kills_timeout_s
        sent_at_kill = 0
        while kills < settings.kills:
            assert time.monotonic() < deadline, "crash scenario took too long"
            if settings.progress_between_kills:
                deployment.wait_for(
                    functools.partial(_client_progressed, deployment, sent_at_kill),
                    deadline - time.monotonic(),
                    f"the client to make progress after kill {kills}",
                )
            time.sleep(rng.uniform(*settings.pause_s))
            sent_at_kill = _client_sent(deployment)
            status = deployment.status("client")
            if status is not None and status["done"]:
                break
            if kills % 4 == 1 and aimed < settings.checkpoint_double_kills:
                marker = _DURING_RECOVERY[aimed % len(_DURING_RECOVERY)]
                _double_kill(deployment, start, deadline, marker)
                aimed += 1
                kills += 2
                continue
            victims = rng.choice([("client",), ("server",), ("client", "server")])
            for victim in victims:
                deployment.kill(victim)
            kills += 1
            time.sleep(rng.uniform(*settings.restart_delay_s))
            for victim in victims:
                start(victim)
        assert kills >= settings.kills, f"the run finished after only {kills} kills; raise total"

        def finished() -> bool:
            server = deployment.status("server")
            client = deployment.status("client")
            return bool(server and client and client["done"] and server["count"] >= total)

        deployment.wait_for(
            finished,
            settings.finish_timeout_s,
            "the client to finish and the server to see every call",
        )
        server = deployment.status("server")
        client = deployment.status("client")
        assert server is not None and client is not None
        assert server["out_of_order"] == []
        assert server["count"] == total
        assert server["chain"] == expected_chain(range(1, total + 1))
        awaited = [n for n in range(1, total + 1) if is_async_call(n)]
        assert client["bad_results"] == []
        assert client["results"] == len(awaited)
        assert client["result_chain"] == expected_chain(awaited)
        assert deployment.terminate("server") == 0, deployment.output("server")[-3000:]
        assert deployment.terminate("client") == 0, deployment.output("client")[-3000:]
    finally:
        deployment.stop_all()

    # Retention: only the kept checkpoints (two by default) and the chunks they need remain.
    for instance in ("server", "client") if settings.check_retention else ():
        checkpoints = asyncio.run(_checkpoints(deployment.log_url, instance))
        assert 1 <= len(checkpoints) <= settings.checkpoints_kept, (instance, checkpoints)

    # Replaying each log from its checkpoint gives the same final state.
    replayed_server = asyncio.run(replay(deployment.log_url, "server", ChainServer))
    assert isinstance(replayed_server, ChainServer)
    assert (replayed_server.count, replayed_server.chain) == (server["count"], server["chain"])
    replayed_client = asyncio.run(replay(deployment.log_url, "client", ChainClient))
    assert isinstance(replayed_client, ChainClient)
    assert replayed_client.done and replayed_client.results == len(awaited)
    assert replayed_client.result_chain == client["result_chain"]
    return CrashOutcome(deployment, kills, server, client)
