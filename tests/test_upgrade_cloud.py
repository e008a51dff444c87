"""Live upgrade on the cloud stores: ``ambrosia upgrade`` on s3 (a moto server) and on
azblob (Azurite), as on a local log (tests/test_upgrade.py).

A short chain run (the client awaits every third call) is upgraded mid-way, the server
from version 1 to 2: the new code takes over, the old primary hands over and exits, the
catalog and the log's metadata name version 2, and every call arrives once and in order.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from ambrosia.testing.harness import Deployment
from tests.test_upgrade import LIVENESS_S, V1, V2, ambrosia, finish, record, role, server_count

pytestmark = [pytest.mark.crash, pytest.mark.emulator]

TOTAL = 250


@pytest.mark.parametrize("backend", ["s3", "azblob"])
def test_live_upgrade_on_a_cloud_log(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue(f"{backend}_env")
    deployment = Deployment(
        tmp_path,
        log_url=f"{backend}://ambrosia-upgrade/run-{uuid.uuid4().hex[:12]}",
        env={"AMBROSIA_CHAIN_TOTAL": str(TOTAL)},
        run_args=("--create-storage", "--version-check-s", "0.1", "--standby-poll-s", "0.05"),
        strict_exits=True,
    )
    deployment.register("server", V1, args=("--version", "1"))
    deployment.register("client", "ambrosia.testing.workloads:ChainClient")
    try:
        deployment.start("server", label="a", args=("--version", "1"))
        deployment.wait_for(lambda: role(deployment, "a") == "primary", LIVENESS_S, "a primary")
        deployment.start("client")
        deployment.wait_for(lambda: server_count(deployment) > 60, LIVENESS_S, "load")
        deployment.start(
            "server", label="up", subcommand="upgrade", args=("--app", V2, "--version", "2")
        )
        deployment.wait_for(
            lambda: "upgraded to version 2" in deployment.output("up"),
            LIVENESS_S,
            "the upgrade",
            ignore=("a",),
        )
        assert deployment.processes["a"].wait(LIVENESS_S) == 0, deployment.output("a")
        assert "handed over to version 2" in deployment.output("a"), deployment.output("a")
        finish(deployment, TOTAL, ignore=("a",))
        server = deployment.status("server")
        assert server is not None and server["version"] == 2, server
        assert 60 < server["upgraded_at"] < TOTAL, server
        assert server["handled_by_v2"] == TOTAL - server["upgraded_at"], server
        registered = record(deployment, "server")
        assert (registered.current_version, registered.app) == (2, V2), registered
        status = ambrosia(deployment, "status", "server")
        assert f"version   2 (catalog), log written by version 2 ({V2})" in status.stdout, status
        assert deployment.terminate("up") == 0, deployment.output("up")
        assert deployment.terminate("client") == 0, deployment.output("client")
    finally:
        deployment.stop_all()
