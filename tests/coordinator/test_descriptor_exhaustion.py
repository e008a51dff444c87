"""Issue 8, case 6 (descriptors): under a 128-descriptor limit, 200 idle connections
made the instance fail a checkpoint with "[Errno 24] Too many open files" and exit.

A real ``ambrosia run`` process with RLIMIT_NOFILE lowered to 128 (set on the running
process with ``prlimit``, before it opens its port), a real client calling it; once
calls flow, the test opens 200 idle TCP connections to its port and keeps them open
while the client makes the rest of its calls, which write checkpoints (a small
``--checkpoint-log-bytes``). The instance must keep running, write checkpoints, serve
the client exactly once and log no traceback.
"""

from __future__ import annotations

import re
import resource
import socket
import sys
from pathlib import Path

import pytest

from ambrosia.testing.harness import Deployment, free_port
from ambrosia.testing.workloads import expected_chain

DESCRIPTORS_MAX = 128
IDLE_CONNECTIONS = 200
TOTAL = 1500

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="prlimit on another process is Linux only"
)


def test_idle_connections_under_a_descriptor_limit(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, env={"AMBROSIA_CHAIN_TOTAL": str(TOTAL)})
    port = free_port()
    deployment.register(
        "server", "ambrosia.testing.workloads:ChainServer", address=f"127.0.0.1:{port}"
    )
    deployment.register("client", "ambrosia.testing.workloads:ChainClient")
    idle: list[socket.socket] = []
    try:
        server = deployment.start("server", args=("--checkpoint-log-bytes", "4096"))
        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (DESCRIPTORS_MAX, DESCRIPTORS_MAX))
        deployment.wait_for(
            lambda: "server: primary (" in deployment.output("server"), 30, "the server"
        )
        deployment.start("client")

        def client_status(key: str) -> int:
            status = deployment.status("client")
            return int(status[key]) if status else 0

        deployment.wait_for(lambda: client_status("sent") >= 100, 30, "the first calls")
        before = deployment.output("server")
        for _ in range(IDLE_CONNECTIONS):
            connection = socket.create_connection(("127.0.0.1", port), timeout=10)
            idle.append(connection)
        assert client_status("sent") < TOTAL, "the run ended too soon: raise TOTAL"

        def finished() -> bool:
            server_status = deployment.status("server")
            return bool(client_status("done") and server_status and server_status["count"] >= TOTAL)

        deployment.wait_for(finished, 60, "the client's calls")
        assert server.poll() is None, deployment.output("server")[-3000:]
        output = deployment.output("server")
        after = output[len(before) :]
        # Checkpoints went on while the idle connections were open.
        assert re.search(r"checkpoint \d+ written", after), after[-3000:]
        assert "Too many open files" not in output
        assert "Traceback" not in output, output[-3000:]
        server_status = deployment.status("server")
        client_status_now = deployment.status("client")
        assert server_status is not None and client_status_now is not None
        assert server_status["out_of_order"] == []
        assert server_status["count"] == TOTAL
        assert server_status["chain"] == expected_chain(range(1, TOTAL + 1))
        awaited = [n for n in range(1, TOTAL + 1) if n % 3 == 0]
        assert client_status_now["bad_results"] == []
        assert client_status_now["results"] == len(awaited)
        assert client_status_now["result_chain"] == expected_chain(awaited)
        assert deployment.terminate("client") == 0
        assert deployment.terminate("server") == 0
    finally:
        for connection in idle:
            connection.close()
        deployment.stop_all()
