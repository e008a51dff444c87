"""Checkpoints taken by a standby on the cloud stores (s3 on a moto server, azblob on
Azurite): the primary under load leaves its checkpoints to the checkpointer standby and
adopts them from the store's candidate area, never taking one itself; every call is
checked exactly once and in order."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.crash.test_checkpointer import (
    LIVENESS_S,
    adopted,
    chain_deployment,
    finish,
    start_pair,
    written,
)

pytestmark = [pytest.mark.crash, pytest.mark.emulator]


@pytest.fixture(params=["s3", "azblob"])
def cloud_log(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    request.getfixturevalue(f"{backend}_env")
    return f"{backend}://ambrosia-checkpointer/run-{uuid.uuid4().hex[:12]}"


def test_primary_adopts_the_checkpointers_checkpoints(tmp_path: Path, cloud_log: str) -> None:
    total = 450
    # Tiny chunks, filled in a second or two: the standby's tail (on s3 one GET per page)
    # may be that far behind, so the primary waits for up to four chunks' worth.
    deployment = chain_deployment(
        tmp_path,
        total,
        cloud_log,
        checkpoint_log_bytes=2048,
        extra_args=("--coordinator-option", "checkpointer_wait_bytes=8192"),
    )
    try:
        start_pair(deployment)
        # The first may be missed while the new standby catches up (the primary then
        # checkpoints itself, as it says); from the first adoption on, none is.
        deployment.wait_for(lambda: bool(adopted(deployment, "a")), LIVENESS_S, "an adoption")
        own = written(deployment, "a")
        deployment.wait_for(
            lambda: len(adopted(deployment, "a")) >= 3, LIVENESS_S, "two more adoptions"
        )
        assert written(deployment, "a") == own, deployment.output("a")
        shown = json.loads(deployment.cli("status", "server", "--json"))
        assert shown["checkpointer"]["pid"] == deployment.processes["b"].pid, shown
        assert shown["last_adopted"]["checkpoint"] in adopted(deployment, "a"), shown
        finish(deployment, total)
    finally:
        deployment.stop_all()
