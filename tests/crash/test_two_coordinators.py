"""Two ``ambrosia run`` processes for one instance, started at once: one primary, one standby.

The behaviour under test (documented in docs/storage.md): the process that wins the
instance's lease becomes primary and writes; the other is a hot standby (role auto). If
the primary dies, the standby takes over (file: at once, the kernel drops a dead holder's
flock; cloud: when the dead holder's lease expires). A process started with ``--role
primary`` waits for the lease up to ``--lease-wait-s`` instead; when its wait runs out it
exits with code 3 and ``ambrosia: error: NAME is running elsewhere: ...``. Afterwards the
log is audited: every page in order, no sequence gap, epochs never decrease, and exactly
two writers: the first primary, then the standby.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from ambrosia.backends import open_store
from ambrosia.coordinator.recovery import read_checkpoint, read_log
from ambrosia.coordinator.runtime import Config
from ambrosia.log.page import Page
from ambrosia.testing.harness import Deployment
from ambrosia.testing.workloads import expected_chain

pytestmark = pytest.mark.crash

# backend -> (calls in the run, lease duration in s: None for the file store, whose flock
# goes with its holder's process instead of expiring)
BACKENDS: dict[str, tuple[int, int | None]] = {
    "file": (3000, None),
    "azblob": (300, 15),
    "s3": (300, 2),
}
# A liveness limit on top of the lease duration: the standby polls the lease and recovers
# the log in a second or two here, even on a loaded 2-core machine.
TAKEOVER_SLACK_S = 45.0
LEASE_TAKEN = re.compile(r"server: lease taken, epoch (\d+)")


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """(backend, log URL or None for the harness's file log), the environment set."""
    name: str = request.param
    if name == "file":
        return name, None
    request.node.add_marker(pytest.mark.emulator)
    request.getfixturevalue(f"{name}_env")
    return name, f"{name}://ambrosia-two/run-{uuid.uuid4().hex[:12]}"


def lease_epochs(deployment: Deployment, label: str) -> list[int]:
    return [int(epoch) for epoch in LEASE_TAKEN.findall(deployment.outputs(label))]


async def audit_log(log_url: str, instance: str) -> list[Page]:
    """Every page from checkpoint 0 on, after read_log's gap and torn-tail checks."""
    store = await open_store(log_url, instance)
    try:
        checkpoints = await store.list_checkpoints()
        assert checkpoints[0] == 0, f"checkpoint 0 was deleted: {checkpoints}"
        first = await read_checkpoint(store, 0)
        reading = await read_log(store, first, Config().page_bytes_max)
        return [page for _, page in reading.pages]
    finally:
        await store.close()


def test_one_primary_one_standby_then_takeover(
    tmp_path: Path, backend: tuple[str, str | None]
) -> None:
    name, log_url = backend
    total, lease_duration_s = BACKENDS[name]
    store_args: tuple[str, ...] = ()
    if lease_duration_s is not None:
        store_args = ("--create-storage", "--store-option", f"lease_duration_s={lease_duration_s}")
    deployment = Deployment(
        tmp_path,
        log_url=log_url,
        env={"AMBROSIA_CHAIN_TOTAL": str(total)},
        # Keep every checkpoint, so the audit sees the log from its first page.
        run_args=("--checkpoints-kept", "1000", *store_args),
    )
    deployment.register("server", "ambrosia.testing.workloads:ChainServer")
    deployment.register("client", "ambrosia.testing.workloads:ChainClient")
    # Standbys wait for as long as the run could take: none may give up before the kill.
    standby_args = ("--lease-wait-s", "600")
    try:
        for label in ("server-a", "server-b"):
            deployment.start("server", args=standby_args, label=label)
        deployment.start("client")

        def primaries() -> list[str]:
            return [label for label in ("server-a", "server-b") if lease_epochs(deployment, label)]

        def client_sent() -> int:
            status = deployment.status("client")
            return int(status["sent"]) if status else 0

        deployment.wait_for(lambda: bool(primaries()), 45, "a primary")

        # A third process that will not wait long gives up with a clear message.
        late = deployment.start(
            "server", args=("--role", "primary", "--lease-wait-s", "0.5"), label="server-c"
        )
        try:
            assert late.wait(30) == 3
        except subprocess.TimeoutExpired:
            deployment.kill("server-c")
            raise
        assert "ambrosia: error: server is running elsewhere" in deployment.output("server-c")
        assert not lease_epochs(deployment, "server-c")

        deployment.wait_for(
            lambda: client_sent() >= total // 3, 45, "a third of the calls", ignore=("server-c",)
        )
        assert len(primaries()) == 1, [deployment.outputs(label) for label in primaries()]
        primary = primaries()[0]
        standby = "server-b" if primary == "server-a" else "server-a"
        assert deployment.processes[standby].poll() is None, deployment.outputs(standby)

        # The primary dies mid-run; the standby takes the lease over and finishes the run.
        status = deployment.status("client")
        assert status is not None and not status["done"], "the run ended too soon: raise total"
        # The file store's flock never expires: only the killed holder's exit releases it,
        # so a flock that outlived its process fails this limit.
        deployment.kill(primary)
        deployment.wait_for(
            lambda: bool(lease_epochs(deployment, standby)),
            (lease_duration_s or 0) + TAKEOVER_SLACK_S,
            "the standby to take the lease",
            ignore=("server-c",),
        )

        def finished() -> bool:
            server = deployment.status("server")
            client = deployment.status("client")
            return bool(server and client and client["done"] and server["count"] >= total)

        deployment.wait_for(finished, 45, "the run to finish", ignore=("server-c",))
        server = deployment.status("server")
        assert server is not None
        assert server["out_of_order"] == [] and server["count"] == total
        assert server["chain"] == expected_chain(range(1, total + 1))
        assert deployment.terminate(standby) == 0
        assert deployment.terminate("client") == 0
    finally:
        deployment.stop_all()

    first_epoch = lease_epochs(deployment, primary)[0]
    second_epoch = lease_epochs(deployment, standby)[0]
    assert first_epoch < second_epoch
    pages = asyncio.run(audit_log(deployment.log_url, "server"))
    sequences = [page.sequence for page in pages]
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))
    epochs = [page.epoch for page in pages]
    assert epochs == sorted(epochs), "an epoch decreased"
    # Exactly two writers, one after the other: never the late process, never both.
    assert set(epochs) == {first_epoch, second_epoch}, sorted(set(epochs))
