"""Exactly-once across SIGKILLs: real processes, real files, random kill moments."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from ambrosia.backends import open_store
from ambrosia.testing.harness import Deployment
from ambrosia.testing.replay import replay
from ambrosia.testing.workloads import ChainClient, ChainServer, expected_chain, is_async_call

pytestmark = pytest.mark.crash

TOTAL = 4000
KILLS = 12


def run_crash_scenario(directory: Path, log_url: str | None, seed: int) -> None:
    rng = random.Random(seed)
    deployment = Deployment(
        directory,
        log_url=log_url,
        env={"AMBROSIA_CHAIN_TOTAL": str(TOTAL)},
        run_args=("--checkpoint-log-bytes", "65536"),
    )
    deployment.register("server", "ambrosia.testing.workloads:ChainServer")
    deployment.register("client", "ambrosia.testing.workloads:ChainClient")
    try:
        deployment.start("server")
        deployment.start("client")
        kills = 0
        deadline = time.monotonic() + 240
        while kills < KILLS:
            assert time.monotonic() < deadline, "crash scenario took too long"
            time.sleep(rng.uniform(0.2, 1.2))
            status = deployment.status("client")
            if status is not None and status["done"]:
                break
            victims = rng.choice([("client",), ("server",), ("client", "server")])
            for victim in victims:
                deployment.kill(victim)
            kills += 1
            time.sleep(rng.uniform(0.0, 0.3))
            for victim in victims:
                deployment.start(victim)
        assert kills >= KILLS, f"the run finished after only {kills} kills; raise TOTAL"

        def finished() -> bool:
            server = deployment.status("server")
            client = deployment.status("client")
            return bool(server and client and client["done"] and server["count"] >= TOTAL)

        deployment.wait_for(finished, 120, "the client to finish and the server to see every call")
        server = deployment.status("server")
        client = deployment.status("client")
        assert server is not None and client is not None
        assert server["out_of_order"] == []
        assert server["count"] == TOTAL
        assert server["chain"] == expected_chain(range(1, TOTAL + 1))
        awaited = [n for n in range(1, TOTAL + 1) if is_async_call(n)]
        assert client["bad_results"] == []
        assert client["results"] == len(awaited)
        assert client["result_chain"] == expected_chain(awaited)
        assert deployment.terminate("server") == 0
        assert deployment.terminate("client") == 0
    finally:
        deployment.stop_all()

    # Retention: only the last two checkpoints (the default) and the chunks they need remain.
    for instance in ("server", "client"):
        checkpoints = asyncio.run(_checkpoints(deployment.log_url, instance))
        assert 1 <= len(checkpoints) <= 2, (instance, checkpoints)

    # Replaying each log from its checkpoint gives the same final state.
    replayed_server = asyncio.run(replay(deployment.log_url, "server", ChainServer))
    assert isinstance(replayed_server, ChainServer)
    assert (replayed_server.count, replayed_server.chain) == (server["count"], server["chain"])
    replayed_client = asyncio.run(replay(deployment.log_url, "client", ChainClient))
    assert isinstance(replayed_client, ChainClient)
    assert replayed_client.done and replayed_client.results == len(awaited)
    assert replayed_client.result_chain == client["result_chain"]


async def _checkpoints(log_url: str, instance: str) -> list[int]:
    store = await open_store(log_url, instance)
    try:
        return await store.list_checkpoints()
    finally:
        await store.close()


def test_crash_file_backend(tmp_path: Path) -> None:
    run_crash_scenario(tmp_path, None, seed=20261121)
