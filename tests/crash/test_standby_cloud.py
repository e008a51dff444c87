"""Hot standbys on the cloud stores (s3 on a moto server, azblob on Azurite).

Split brain: the primary is paused (SIGSTOP) past its lease; the standby takes the lease
over (the store fences the paused writer's chunks), listens even though the paused
process still holds the registered port, and serves; the old primary, resumed (SIGCONT),
finds itself fenced and exits with a clear message, without writing a page. The log
audit then shows every page of the paused primary's epoch before every page of the new
one, and no epoch that no process took. Every call is checked exactly once, in order.
"""

from __future__ import annotations

import asyncio
import re
import signal
import uuid
from pathlib import Path

import pytest

from ambrosia.testing.harness import Deployment
from ambrosia.testing.log_audit import LogWitness, audit_log
from ambrosia.testing.workloads import expected_chain

pytestmark = [pytest.mark.crash, pytest.mark.emulator]

LEASE_DURATION_S = {"azblob": 15, "s3": 2}
ROLE = re.compile(r": role (primary|standby) ")
LEASE_TAKEN = re.compile(r"server: lease taken, epoch (\d+)")
LIVENESS_S = 60.0


@pytest.fixture(params=["s3", "azblob"])
def cloud_log(request: pytest.FixtureRequest) -> tuple[str, str]:
    backend: str = request.param
    request.getfixturevalue(f"{backend}_env")
    return backend, f"{backend}://ambrosia-standby/run-{uuid.uuid4().hex[:12]}"


def role(deployment: Deployment, label: str) -> str | None:
    process = deployment.processes.get(label)
    if process is None or process.poll() is not None:
        return None
    roles = ROLE.findall(deployment.output(label))
    return roles[-1] if roles else None


def test_paused_primary_is_fenced_and_the_standby_serves(
    tmp_path: Path, cloud_log: tuple[str, str]
) -> None:
    backend, log_url = cloud_log
    lease_s = LEASE_DURATION_S[backend]
    total = 400
    deployment = Deployment(
        tmp_path,
        log_url=log_url,
        env={"AMBROSIA_CHAIN_TOTAL": str(total)},
        run_args=(
            "--create-storage",
            "--store-option",
            f"lease_duration_s={lease_s}",
            "--checkpoint-log-bytes",
            "65536",
            "--checkpoints-kept",
            "1000",
        ),
    )
    deployment.register("server", "ambrosia.testing.workloads:ChainServer")
    deployment.register("client", "ambrosia.testing.workloads:ChainClient")

    def count() -> int:
        status = deployment.status("server")
        return int(status["count"]) if status else 0

    try:
        deployment.start("server", label="a")
        deployment.wait_for(lambda: role(deployment, "a") == "primary", LIVENESS_S, "a primary")
        deployment.start("server", label="b")
        deployment.start("client")
        deployment.wait_for(lambda: role(deployment, "b") == "standby", LIVENESS_S, "b standby")
        deployment.wait_for(lambda: count() > total // 4, LIVENESS_S, "a quarter of the calls")

        deployment.processes["a"].send_signal(signal.SIGSTOP)
        try:
            deployment.wait_for(
                lambda: role(deployment, "b") == "primary",
                lease_s + LIVENESS_S,
                "b to take over from the paused primary",
            )
            # The instance serves again while the paused primary still holds its port and
            # its connections: the client finds b at the address b published.
            at = count()
            deployment.wait_for(lambda: count() > at + 20, LIVENESS_S, "calls served by b")
        finally:
            deployment.processes["a"].send_signal(signal.SIGCONT)
        # The resumed primary finds itself fenced and exits, saying so.
        assert deployment.processes["a"].wait(LIVENESS_S) == 1, deployment.output("a")
        assert "fenced" in deployment.output("a").lower(), deployment.output("a")

        def done() -> bool:
            client = deployment.status("client")
            return bool(client and client["done"]) and count() >= total

        deployment.wait_for(done, LIVENESS_S + 2 * lease_s, "every call", ignore=("a",))
        server = deployment.status("server")
        assert server is not None and not server["out_of_order"], server
        assert server["chain"] == expected_chain(range(1, total + 1)), server
        for label in ("b", "client"):
            assert deployment.terminate(label) == 0, deployment.output(label)
    finally:
        deployment.stop_all()

    epochs = [
        int(e) for label in ("a", "b") for e in LEASE_TAKEN.findall(deployment.outputs(label))
    ]
    assert len(epochs) == 2, epochs
    witness = LogWitness("server")
    assert asyncio.run(audit_log(log_url, "server", witness)) == []
    # Split brain: no page of the old epoch after the takeover, none of an unknown one.
    assert witness.check_epochs(sorted(epochs)) == []
    old, new = sorted(epochs)
    pages = [witness.pages[sequence].epoch for sequence in sorted(witness.pages)]
    assert old in pages and new in pages, pages
    assert pages == sorted(pages), "a page of the paused primary after the takeover"
