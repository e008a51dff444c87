"""Live upgrade as a user runs it: ``ambrosia upgrade NAME --app new:Class --version V``.

Real processes on the file backend, the chain workload (``ambrosia.testing.workloads``)
as the load: a client whose every call to the server is checked exactly once and in
order (a hash chain of the call numbers), a third of them awaited for a result.

- The upgrade of a primary under load: the new code takes over (its status says so, and
  counts what it handled), the old primary exits with the hand-over message, the catalog
  names the new version and class, every call arrives once and in order; the pause the
  load saw is printed. An old-version process started afterwards refuses to run.
- ``--test`` migrates and replays without taking over (the primary keeps serving,
  untouched), and reports a divergent version at the call where it diverges; a version
  whose migration raises aborts the upgrade before the primary is asked anything.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ambrosia.catalog import InstanceRecord, open_catalog
from ambrosia.testing.harness import Deployment
from ambrosia.testing.workloads import expected_chain

pytestmark = pytest.mark.crash

ROLE = re.compile(r": role (primary|standby) ")
LIVENESS_S = 60.0
V1 = "ambrosia.testing.workloads:ChainServer"
V2 = "tests.apps.chain_v2:ChainServerV2"


def chain_deployment(tmp_path: Path, total: int) -> Deployment:
    deployment = Deployment(
        tmp_path,
        env={"AMBROSIA_CHAIN_TOTAL": str(total)},
        run_args=("--checkpoint-log-bytes", "16384", "--version-check-s", "0.1"),
        strict_exits=True,
    )
    deployment.register("server", V1, args=("--version", "1"))
    deployment.register("client", "ambrosia.testing.workloads:ChainClient")
    return deployment


def role(deployment: Deployment, label: str) -> str | None:
    process = deployment.processes.get(label)
    if process is None or process.poll() is not None:
        return None
    roles = ROLE.findall(deployment.output(label))
    return roles[-1] if roles else None


def stamp(output: str, marker: str) -> float:
    """The time of the first log line holding ``marker``."""
    for line in output.splitlines():
        if marker in line:
            moment = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return moment.timestamp()
    raise AssertionError(f"no line with {marker!r} in:\n{output}")


def server_count(deployment: Deployment) -> int:
    status = deployment.status("server")
    return int(status["count"]) if status else 0


def record(deployment: Deployment, name: str) -> InstanceRecord:
    async def get() -> InstanceRecord:
        catalog = await open_catalog(deployment.catalog_url)
        try:
            return await catalog.get(name)
        finally:
            await catalog.close()

    return asyncio.run(get())


def ambrosia(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ambrosia.cli", *args],
        env=deployment.env,
        capture_output=True,
        text=True,
        timeout=LIVENESS_S,
    )


def finish(deployment: Deployment, total: int, *, ignore: tuple[str, ...] = ()) -> None:
    def done() -> bool:
        client = deployment.status("client")
        return bool(client and client["done"]) and server_count(deployment) >= total

    deployment.wait_for(done, LIVENESS_S * 2, "every call", ignore=ignore)
    server = deployment.status("server")
    client = deployment.status("client")
    assert server is not None and client is not None
    assert server["count"] == total, server
    assert server["chain"] == expected_chain(range(1, total + 1)), server
    assert not server["out_of_order"], server
    assert not client["bad_results"], client
    deployment.check_exits(ignore=ignore)


def test_live_upgrade_under_load(tmp_path: Path) -> None:
    total = 4000
    deployment = chain_deployment(tmp_path, total)
    try:
        deployment.start("server", label="a", args=("--version", "1"))
        deployment.wait_for(lambda: role(deployment, "a") == "primary", LIVENESS_S, "a primary")
        deployment.start("client")
        deployment.wait_for(lambda: server_count(deployment) > 500, LIVENESS_S, "load")
        deployment.start(
            "server", label="up", subcommand="upgrade", args=("--app", V2, "--version", "2")
        )
        # The load, sampled until the new code serves: the longest time without progress.
        samples: list[tuple[float, int]] = []
        deadline = time.monotonic() + LIVENESS_S
        while True:
            deployment.check_exits(ignore=("a",))
            status = deployment.status("server") or {}
            samples.append((time.monotonic(), int(status.get("count", 0))))
            if status.get("version") == 2 and deployment.processes["a"].poll() is not None:
                break
            assert time.monotonic() < deadline, "the upgrade did not finish"
            time.sleep(0.005)
        old = deployment.output("a")
        assert deployment.processes["a"].returncode == 0, old
        assert "handed over to version 2: this process (version 1) exits" in old, old
        deployment.wait_for(
            lambda: "upgraded to version 2" in deployment.output("up"),
            LIVENESS_S,
            "the new version's checkpoint",
            ignore=("a",),
        )
        upgrader = deployment.output("up")
        assert role(deployment, "up") == "primary", upgrader
        finish(deployment, total, ignore=("a",))
        server = deployment.status("server")
        assert server is not None
        # The new code took over mid-load and handled the rest.
        assert 500 < server["upgraded_at"] < total, server
        assert server["handled_by_v2"] == total - server["upgraded_at"], server
        registered = record(deployment, "server")
        assert (registered.current_version, registered.upgrade_version) == (2, 2), registered
        assert registered.app == V2, registered

        # The longest time the load made no progress, between two changes of the count
        # (its status is written every 50 ms: that is the resolution).
        changes = [t for (t, c), (_, before) in itertools.pairwise(samples) if c != before]
        stall = max((b - a for a, b in itertools.pairwise(changes)), default=0.0)
        handover = stamp(upgrader, "role primary (took over") - stamp(old, "asks this primary")
        print(
            f"\nupgrade under load: hand-over {handover * 1000:.0f} ms (from the old primary "
            f"stopping its input to the new one serving), longest stall of the load "
            f"{stall * 1000:.0f} ms"
        )
        assert 0 < handover < LIVENESS_S

        # A process of the old version started now refuses, naming both versions.
        refused = ambrosia(deployment, "run", "server", "--plaintext", "--version", "1")
        assert refused.returncode == 2, refused
        assert "runs version 2" in refused.stderr, refused.stderr
        assert "this process is version 1" in refused.stderr, refused.stderr
        assert deployment.terminate("up") == 0, deployment.output("up")
        assert deployment.terminate("client") == 0, deployment.output("client")
        assert not deployment.log_findings(), deployment.log_findings()
    finally:
        deployment.stop_all()


def test_upgrade_test_and_failed_migration_leave_the_primary_serving(tmp_path: Path) -> None:
    total = 3000
    deployment = chain_deployment(tmp_path, total)
    try:
        deployment.start("server", label="a", args=("--version", "1"))
        deployment.wait_for(lambda: role(deployment, "a") == "primary", LIVENESS_S, "a primary")
        deployment.start("client")
        deployment.wait_for(lambda: server_count(deployment) > 300, LIVENESS_S, "load")
        upgrade = ("upgrade", "server", "--plaintext", "--version", "2", "--app")

        same = ambrosia(deployment, *upgrade, V2, "--test")
        assert same.returncode == 0, same
        assert "no divergence" in same.stdout, same.stdout
        assert re.search(r"[1-9]\d* sent message\(s\) compared", same.stdout), same.stdout

        diverging = ambrosia(
            deployment, *upgrade, "tests.apps.chain_v2:ChainServerV3Diverging", "--test"
        )
        assert diverging.returncode == 1, diverging
        assert "divergence at" in diverging.stdout and "to client" in diverging.stdout, diverging

        bad = ambrosia(deployment, *upgrade, "tests.apps.chain_v2:ChainServerBadMigration")
        assert bad.returncode == 2, bad
        assert "upgrade_from failed" in bad.stderr, bad.stderr
        assert "this migration does not know the old state" in bad.stderr, bad.stderr

        # The primary served throughout and serves the rest; the catalog is unchanged.
        assert role(deployment, "a") == "primary"
        registered = record(deployment, "server")
        assert (registered.current_version, registered.upgrade_version) == (1, 1), registered
        assert registered.app == V1
        finish(deployment, total)
        status = deployment.status("server")
        assert status is not None and "version" not in status, status
        assert deployment.terminate("a") == 0, deployment.output("a")
        assert deployment.terminate("client") == 0, deployment.output("client")
        assert not deployment.log_findings(), deployment.log_findings()
    finally:
        deployment.stop_all()


def test_takeover_of_an_instance_that_calls_itself(tmp_path: Path) -> None:
    """The client drives the load with self-calls (each call forks the next one): after
    the hand-over the new primary must log the self-calls it makes, or the load stops.
    (A standby that regenerated a self-call before it read the logged copy used to keep
    its self-stream marked dirty for good, and logged no self-call after taking over.)

    The client awaits a third of its calls, so the hand-over often finds a handler
    awaiting one: the upgrader then serves the old code until a page leaves none waiting,
    and migrates there. The load must go on to the end."""
    total = 3000
    deployment = chain_deployment(tmp_path, total)
    client_app = "ambrosia.testing.workloads:ChainClient"
    outcomes = ("upgraded to version 1", "upgrade to version 1 aborted")
    try:
        deployment.start("server", args=("--version", "1"))
        deployment.start("client", label="c1")
        deployment.wait_for(lambda: server_count(deployment) > 300, LIVENESS_S, "load")
        deployment.start(
            "client", label="c2", subcommand="upgrade", args=("--app", client_app, "--version", "1")
        )
        deployment.wait_for(
            lambda: any(text in deployment.output("c2") for text in outcomes),
            LIVENESS_S,
            "the takeover",
            ignore=("c1",),
        )
        assert "handed over to version 1" in deployment.output("c1"), deployment.output("c1")
        at = server_count(deployment)
        assert at < total, "the load ended before the upgrade: nothing was tested"
        finish(deployment, total, ignore=("c1",))
        assert outcomes[0] in deployment.output("c2"), deployment.output("c2")
        assert record(deployment, "client").current_version == 1
        assert deployment.terminate("c2") == 0, deployment.output("c2")
        assert deployment.terminate("server") == 0, deployment.output("server")
        assert not deployment.log_findings(), deployment.log_findings()
    finally:
        deployment.stop_all()


CLIENT_V1 = "tests.apps.chain_v2:ChainClientV1"
CLIENT_V2 = "tests.apps.chain_v2:ChainClientV2"


def test_upgrade_of_an_instance_awaiting_calls_under_load(tmp_path: Path) -> None:
    """The client awaits every third call to the server, one call after another, so it
    is mid-call at most moments: the upgrade still completes (the new primary serves
    the old code until a page boundary where no handler awaits, then migrates), every
    call arrives once and in order, and every awaited result once. The versions come
    from the classes (``__ambrosia_version__``): the old class is refused afterwards,
    naming both versions; ``ambrosia list`` and ``ambrosia status`` show the new one."""
    total = 1500
    deployment = chain_deployment(tmp_path, total)
    deployment.register("client", CLIENT_V1, args=("--version", "1", "--replace"))
    try:
        deployment.start("server", args=("--version", "1"))
        deployment.start("client", label="c1")  # version 1, as its class declares
        deployment.wait_for(lambda: server_count(deployment) > 200, LIVENESS_S, "load")
        deployment.start("client", label="c2", subcommand="upgrade", args=("--app", CLIENT_V2))
        deployment.wait_for(
            lambda: (
                "upgraded to version 2" in deployment.output("c2")
                or "aborted" in deployment.output("c2")
            ),
            LIVENESS_S,
            "the upgrade",
            ignore=("c1",),
        )
        upgrader = deployment.output("c2")
        assert "upgraded to version 2" in upgrader, upgrader
        assert "handed over to version 2" in deployment.output("c1"), deployment.output("c1")
        assert server_count(deployment) < total, "the load ended before the upgrade"
        finish(deployment, total, ignore=("c1",))
        client = deployment.status("client")
        assert client is not None and client["version"] == 2, client
        assert 0 < client["upgraded_at"] < total, client
        registered = record(deployment, "client")
        assert (registered.current_version, registered.upgrade_version) == (2, 2), registered
        assert registered.app == CLIENT_V2, registered
        served = re.search(r"migrated after page \d+ \((\d+) page\(s\) served", upgrader)
        assert served is not None, upgrader
        print(f"\nclient upgraded; {served.group(1)} page(s) served by the old code first")

        refused = ambrosia(deployment, "run", "client", "--plaintext", "--app", CLIENT_V1)
        assert refused.returncode == 2, refused
        assert "runs version 2" in refused.stderr, refused.stderr
        assert f"this process is version 1 ({CLIENT_V1})" in refused.stderr, refused.stderr
        listing = ambrosia(deployment, "list")
        assert re.search(r"^client .* 2 +" + re.escape(CLIENT_V2), listing.stdout, re.M), listing
        status = ambrosia(deployment, "status", "client")
        assert f"version   2 (catalog), log written by version 2 ({CLIENT_V2})" in status.stdout
        assert deployment.terminate("c2") == 0, deployment.output("c2")
        assert deployment.terminate("server") == 0, deployment.output("server")
        assert not deployment.log_findings(), deployment.log_findings()
    finally:
        deployment.stop_all()


@pytest.mark.parametrize("point", ["taken-over", "migrated", "checkpointed", "committed"])
def test_sigkill_during_the_upgrade(tmp_path: Path, point: str) -> None:
    """The upgrader SIGKILLed at ``point``: after the takeover before the migration;
    after migrating before the new code's checkpoint is durable; after it, before the
    catalog records version 2; after the catalog does. The old primary has handed over
    by then, so the instance is started again the way a supervisor would, with
    ``ambrosia run server`` (no version): it runs version 1 when the new code's
    checkpoint was not durable (the new code served nothing: no page reaches it before
    that checkpoint), version 2 when it was (the log is the upgrade's commit point: a
    catalog left behind is brought up to it). Only that version runs; the other is
    refused. After an interrupted upgrade, the upgrade tried again completes. Every
    call arrives once and in order."""
    total = 1500
    deployment = chain_deployment(tmp_path, total)
    upgraded = point in ("checkpointed", "committed")
    try:
        deployment.start("server", label="a", args=("--version", "1"))
        deployment.wait_for(lambda: role(deployment, "a") == "primary", LIVENESS_S, "a primary")
        deployment.start("client")
        deployment.wait_for(lambda: server_count(deployment) > 200, LIVENESS_S, "load")
        upgrade = ("--app", V2, "--version", "2")
        deployment.start(
            "server",
            label="up",
            subcommand="upgrade",
            args=upgrade,
            env={"AMBROSIA_UPGRADE_HALT_AT": point},
        )
        deployment.wait_for(
            lambda: f"upgrade halted at {point}" in deployment.output("up"),
            LIVENESS_S,
            f"the upgrader at {point}",
            ignore=("a",),
        )
        deployment.kill("up")
        assert deployment.processes["a"].wait(LIVENESS_S) == 0, deployment.output("a")
        assert "handed over to version 2" in deployment.output("a"), deployment.output("a")
        at = server_count(deployment)
        assert at < total, "the load ended before the upgrade"

        deployment.start("server", label="b")
        deployment.wait_for(
            lambda: role(deployment, "b") == "primary", LIVENESS_S, "b primary", ignore=("a",)
        )
        deployment.wait_for(
            lambda: server_count(deployment) > at, LIVENESS_S, "progress", ignore=("a", "up")
        )
        server = deployment.status("server")
        assert server is not None
        registered = record(deployment, "server")
        ignore: tuple[str, ...] = ("a", "up")
        if upgraded:
            assert server.get("version") == 2, server
            assert (registered.current_version, registered.app) == (2, V2), registered
            refused = ambrosia(deployment, "run", "server", "--plaintext", "--version", "1")
            assert refused.returncode == 2, refused
            assert "runs version 2" in refused.stderr, refused.stderr
            assert "this process is version 1" in refused.stderr, refused.stderr
        else:
            assert "version" not in server, server  # the version 1 class serves
            assert (registered.current_version, registered.app) == (1, V1), registered
            status = ambrosia(deployment, "status", "server")
            assert "upgrade to version 2 in progress (or interrupted" in status.stdout, status
            refused = ambrosia(deployment, "run", "server", "--plaintext", "--version", "2")
            assert refused.returncode == 2, refused
            assert "runs version 1" in refused.stderr, refused.stderr
            # The upgrade, tried again, completes (the stale request is withdrawn first).
            deployment.start("server", label="up2", subcommand="upgrade", args=upgrade)
            deployment.wait_for(
                lambda: "upgraded to version 2" in deployment.output("up2"),
                LIVENESS_S,
                "the second upgrade",
                ignore=("a", "up", "b"),
            )
            assert deployment.processes["b"].wait(LIVENESS_S) == 0, deployment.output("b")
            assert "handed over to version 2" in deployment.output("b"), deployment.output("b")
            ignore = ("a", "up", "b")
        finish(deployment, total, ignore=ignore)
        server = deployment.status("server")
        assert server is not None and server["version"] == 2, server
        assert server["handled_by_v2"] == total - server["upgraded_at"], server
        assert record(deployment, "server").current_version == 2
        last = "b" if upgraded else "up2"
        assert deployment.terminate(last) == 0, deployment.output(last)
        assert deployment.terminate("client") == 0, deployment.output("client")
        assert not deployment.log_findings(), deployment.log_findings()
    finally:
        deployment.stop_all()
