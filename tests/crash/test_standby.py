"""Hot standbys as a user runs them: ``ambrosia run NAME`` started several times.

- The failover scenario (``ambrosia.testing.failover``): every server and relay instance
  run by a primary and two standbys, whichever is primary SIGKILLed again and again
  (some standbys too), every call checked exactly once and in order, each log replayed,
  and the split-brain audit (no page under an epoch after a later one took over). The
  long variant is ``python -m ambrosia.testing.failover`` (20 kills by default).
- ``ambrosia status`` names the primary and each standby with its lag.
- A standby killed and started again catches up; one started late catches up from the
  checkpoint; one whose next chunk retention deleted reloads from the latest checkpoint
  and says so.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from pathlib import Path

import pytest

from ambrosia.testing.failover import FailoverSettings, run_failover_scenario
from ambrosia.testing.harness import Deployment
from ambrosia.testing.log_audit import LogWitness, audit_log
from ambrosia.testing.workloads import expected_chain

pytestmark = pytest.mark.crash

ROLE = re.compile(r": role (primary|standby) ")
LIVENESS_S = 60.0


def role(deployment: Deployment, label: str) -> str | None:
    process = deployment.processes.get(label)
    if process is None or process.poll() is not None:
        return None
    roles = ROLE.findall(deployment.output(label))
    return roles[-1] if roles else None


def test_failover_scenario_file_backend(tmp_path: Path) -> None:
    settings = FailoverSettings(total_calls=1500, kills=5, relays=1)
    outcome = run_failover_scenario(tmp_path, None, 20261201, settings=settings)
    assert not outcome.violations, outcome.report()
    assert len(outcome.takeovers_s) == settings.kills, outcome.report()


def chain_deployment(tmp_path: Path, total: int, *run_args: str) -> Deployment:
    deployment = Deployment(
        tmp_path,
        env={"AMBROSIA_CHAIN_TOTAL": str(total)},
        run_args=("--checkpoint-log-bytes", "16384", *run_args),
        strict_exits=True,
    )
    deployment.register("server", "ambrosia.testing.workloads:ChainServer")
    deployment.register("client", "ambrosia.testing.workloads:ChainClient")
    return deployment


def server_count(deployment: Deployment) -> int:
    status = deployment.status("server")
    return int(status["count"]) if status else 0


def finish(deployment: Deployment, total: int) -> None:
    def done() -> bool:
        client = deployment.status("client")
        return bool(client and client["done"]) and server_count(deployment) >= total

    deployment.wait_for(done, 120, "every call")
    server = deployment.status("server")
    assert server is not None
    assert server["chain"] == expected_chain(range(1, total + 1)), server
    assert not server["out_of_order"], server
    deployment.check_exits()
    for label, process in list(deployment.processes.items()):
        if process.poll() is None:
            assert deployment.terminate(label) == 0, deployment.output(label)
    assert not deployment.log_findings(), deployment.log_findings()


def test_status_names_primary_and_standbys_and_a_restarted_standby_catches_up(
    tmp_path: Path,
) -> None:
    total = 1500
    deployment = chain_deployment(tmp_path, total)
    try:
        deployment.start("server", label="a")
        deployment.wait_for(lambda: role(deployment, "a") == "primary", LIVENESS_S, "a primary")
        deployment.start("server", label="b")
        deployment.start("client")
        deployment.wait_for(lambda: role(deployment, "b") == "standby", LIVENESS_S, "b standby")

        def status() -> dict[str, object]:
            decoded: dict[str, object] = json.loads(deployment.cli("status", "server", "--json"))
            return decoded

        deployment.wait_for(lambda: bool(status()["standbys"]), LIVENESS_S, "a standby note")
        shown = status()
        primary = shown["primary"]
        assert isinstance(primary, dict)
        assert primary["pid"] == str(deployment.processes["a"].pid), shown
        assert primary["epoch"] == 1 and primary["address"], shown
        standbys = shown["standbys"]
        assert isinstance(standbys, list) and len(standbys) == 1, shown
        assert standbys[0]["pid"] == deployment.processes["b"].pid, shown
        text = deployment.cli("status", "server")
        assert f"pid {deployment.processes['a'].pid}" in text and "standby   pid" in text, text

        # The standby dies and comes back: it reloads and follows again.
        at = server_count(deployment)
        deployment.kill("b")
        deployment.start("server", label="b")
        deployment.wait_for(lambda: role(deployment, "b") == "standby", LIVENESS_S, "b again")
        deployment.wait_for(lambda: server_count(deployment) > at + 100, LIVENESS_S, "progress")
        # ... and is hot: the primary dies, b serves the rest.
        deployment.kill("a")
        deployment.wait_for(lambda: role(deployment, "b") == "primary", LIVENESS_S, "takeover")
        assert "took over at epoch 2" in deployment.output("b"), deployment.output("b")
        finish(deployment, total)
        assert status()["standbys"] == [], "a standby that became primary removes its note"
    finally:
        deployment.stop_all()


def test_late_standby_behind_retention_reloads_from_the_latest_checkpoint(
    tmp_path: Path,
) -> None:
    """A standby paused (SIGSTOP) while retention deletes the chunks it was to read next."""
    total = 3000
    deployment = chain_deployment(tmp_path, total, "--checkpoints-kept", "1")
    try:
        deployment.start("server", label="a")
        deployment.wait_for(lambda: role(deployment, "a") == "primary", LIVENESS_S, "a primary")
        deployment.start("client")
        deployment.wait_for(lambda: server_count(deployment) > 200, LIVENESS_S, "progress")
        # Started late: it loads the checkpoint the primary took meanwhile, not checkpoint 0.
        deployment.start("server", label="b")
        deployment.wait_for(lambda: role(deployment, "b") == "standby", LIVENESS_S, "b standby")
        loaded = re.search(r"role standby \(checkpoint (\d+)", deployment.output("b"))
        assert loaded and int(loaded.group(1)) > 0, deployment.output("b")
        deployment.processes["b"].send_signal(signal.SIGSTOP)
        try:
            written = deployment.output("a").count("checkpoint ")
            deployment.wait_for(
                lambda: deployment.output("a").count("checkpoint ") >= written + 3,
                LIVENESS_S,
                "retention to pass the paused standby",
            )
        finally:
            deployment.processes["b"].send_signal(signal.SIGCONT)
        deployment.wait_for(
            lambda: (
                "behind the retention window" in deployment.output("b")
                and "reloaded from checkpoint" in deployment.output("b")
            ),
            LIVENESS_S,
            "b to reload",
        )
        time.sleep(0.5)
        deployment.kill("a")
        deployment.wait_for(lambda: role(deployment, "b") == "primary", LIVENESS_S, "takeover")
        finish(deployment, total)
    finally:
        deployment.stop_all()


def test_paused_primary_on_the_file_store_is_fenced(tmp_path: Path) -> None:
    """Split brain on the file store (its expiring lease): the paused primary, resumed,
    exits without writing; the standby served meanwhile on another port."""
    total = 1500
    lease_s = 2
    deployment = chain_deployment(
        tmp_path,
        total,
        "--store-option",
        f"lease_duration_s={lease_s}",
        "--checkpoints-kept",
        "1000",
    )
    try:
        deployment.start("server", label="a")
        deployment.wait_for(lambda: role(deployment, "a") == "primary", LIVENESS_S, "a primary")
        deployment.start("server", label="b")
        deployment.start("client")
        deployment.wait_for(lambda: role(deployment, "b") == "standby", LIVENESS_S, "b standby")
        deployment.wait_for(lambda: server_count(deployment) > 200, LIVENESS_S, "progress")
        deployment.processes["a"].send_signal(signal.SIGSTOP)
        try:
            deployment.wait_for(
                lambda: role(deployment, "b") == "primary", lease_s + LIVENESS_S, "takeover"
            )
            at = server_count(deployment)
            deployment.wait_for(
                lambda: server_count(deployment) > at + 20, LIVENESS_S, "calls served by b"
            )
        finally:
            deployment.processes["a"].send_signal(signal.SIGCONT)
        assert deployment.processes["a"].wait(LIVENESS_S) == 1, deployment.output("a")
        assert "FENCED" in deployment.output("a"), deployment.output("a")
        deployment.stopped["a"] = "terminate"  # its exit 1 is what this test expects
        finish_after_fence(deployment, total)
    finally:
        deployment.stop_all()
    epochs = sorted(
        int(epoch)
        for label in ("a", "b")
        for epoch in re.findall(r"server: lease taken, epoch (\d+)", deployment.outputs(label))
    )
    assert len(epochs) == 2, epochs
    witness = LogWitness("server")
    assert asyncio.run(audit_log(deployment.log_url, "server", witness)) == []
    assert witness.check_epochs(epochs) == []
    pages = [witness.pages[sequence].epoch for sequence in sorted(witness.pages)]
    assert epochs[0] in pages and epochs[1] in pages and pages == sorted(pages), pages


def finish_after_fence(deployment: Deployment, total: int) -> None:
    """``finish``, allowing the fenced primary's CRITICAL lines (its refused write)."""

    def done() -> bool:
        client = deployment.status("client")
        return bool(client and client["done"]) and server_count(deployment) >= total

    deployment.wait_for(done, 120, "every call")
    server = deployment.status("server")
    assert server is not None and not server["out_of_order"], server
    assert server["chain"] == expected_chain(range(1, total + 1)), server
    for label in ("b", "client"):
        assert deployment.terminate(label) == 0, deployment.output(label)
    findings = [f for f in deployment.log_findings() if f.path.name != "a.1.log"]
    assert not findings, findings
