"""Checkpoints taken by a standby (``ambrosia run NAME --role standby --checkpointer``).

Real processes on the file store: the primary under a steady chain of calls leaves its
checkpoints to the checkpointer standby and adopts them, never taking one itself; the
primary SIGKILLed, the instance recovers from an adopted checkpoint with every call
exactly once and in order; bad candidates (checksum, page, torn by a kill in the middle
of the write) are refused with the reason logged and the primary checkpoints itself; the
checkpointer killed, the primary falls back and says so.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest

from ambrosia.testing.harness import Deployment
from ambrosia.testing.workloads import expected_chain

pytestmark = pytest.mark.crash

ROLE = re.compile(r": role (primary|standby) ")
ADOPTED = re.compile(r"server: checkpoint (\d+) adopted from checkpointer")
WRITTEN = re.compile(r"server: checkpoint (\d+) written")
LIVENESS_S = 60.0
# Small chunks, so that checkpoints come every few hundred calls; a short silence bound
# (the status is rewritten every second and read every second), so that the fallback
# after a kill is seen within seconds.
RUN_ARGS = (
    "--coordinator-option",
    "checkpointer_silent_s=3",
)


def role(deployment: Deployment, label: str) -> str | None:
    process = deployment.processes.get(label)
    if process is None or process.poll() is not None:
        return None
    roles = ROLE.findall(deployment.output(label))
    return roles[-1] if roles else None


def chain_deployment(
    tmp_path: Path,
    total: int,
    log_url: str | None = None,
    *,
    checkpoint_log_bytes: int = 8192,
    extra_args: tuple[str, ...] = (),
) -> Deployment:
    deployment = Deployment(
        tmp_path,
        log_url=log_url,
        env={"AMBROSIA_CHAIN_TOTAL": str(total)},
        run_args=(
            *(("--create-storage",) if log_url else ()),
            "--checkpoint-log-bytes",
            str(checkpoint_log_bytes),
            *RUN_ARGS,
            *extra_args,
        ),
        strict_exits=True,
    )
    deployment.register("server", "ambrosia.testing.workloads:ChainServer")
    deployment.register("client", "ambrosia.testing.workloads:ChainClient")
    return deployment


def server_count(deployment: Deployment) -> int:
    status = deployment.status("server")
    return int(status["count"]) if status else 0


def adopted(deployment: Deployment, label: str) -> list[int]:
    return [int(n) for n in ADOPTED.findall(deployment.output(label))]


def written(deployment: Deployment, label: str) -> list[int]:
    return [int(n) for n in WRITTEN.findall(deployment.output(label))]


def start_pair(deployment: Deployment, *, checkpointer_env: dict[str, str] | None = None) -> None:
    """A primary ``a`` (its first checkpoint its own), then checkpointer ``b``, then load."""
    deployment.start("server", label="a")
    deployment.wait_for(lambda: role(deployment, "a") == "primary", LIVENESS_S, "a primary")
    deployment.wait_for(lambda: bool(written(deployment, "a")), LIVENESS_S, "a's first checkpoint")
    deployment.start(
        "server", label="b", args=("--role", "standby", "--checkpointer"), env=checkpointer_env
    )
    deployment.wait_for(lambda: role(deployment, "b") == "standby", LIVENESS_S, "b standby")
    assert "checkpointer" in deployment.output("b"), deployment.output("b")
    deployment.start("client")


def finish(deployment: Deployment, total: int, *, allowed: tuple[str, ...] = ()) -> None:
    def done() -> bool:
        client = deployment.status("client")
        return bool(client and client["done"]) and server_count(deployment) >= total

    deployment.wait_for(done, 120, "every call")
    server = deployment.status("server")
    assert server is not None
    assert server["chain"] == expected_chain(range(1, total + 1)), server
    assert not server["out_of_order"], server
    for label, process in list(deployment.processes.items()):
        if process.poll() is None:
            assert deployment.terminate(label) == 0, deployment.output(label)
    assert not deployment.log_findings(allowed), deployment.log_findings(allowed)


def test_primary_adopts_the_checkpointers_checkpoints_and_recovers_from_one(
    tmp_path: Path,
) -> None:
    total = 1500
    deployment = chain_deployment(tmp_path, total)
    try:
        start_pair(deployment)
        # The first may be missed while the new standby catches up (the primary then
        # checkpoints itself, as it says); from the first adoption on, none is.
        deployment.wait_for(lambda: bool(adopted(deployment, "a")), LIVENESS_S, "an adoption")
        own = written(deployment, "a")
        fallbacks = deployment.output("a").count("checkpointing itself")
        deployment.wait_for(
            lambda: len(adopted(deployment, "a")) >= 4, LIVENESS_S, "three more adoptions"
        )
        assert written(deployment, "a") == own, deployment.output("a")
        assert deployment.output("a").count("checkpointing itself") == fallbacks
        shown = json.loads(deployment.cli("status", "server", "--json"))
        assert shown["checkpointer"]["pid"] == deployment.processes["b"].pid, shown
        assert shown["last_adopted"]["checkpoint"] in adopted(deployment, "a"), shown
        text = deployment.cli("status", "server")
        assert f"checkpointer pid {deployment.processes['b'].pid}" in text, text
        # Both die (the checkpointer first, so that no standby takes over): the restart
        # recovers cold from the adopted checkpoint the metadata names.
        deployment.kill("b")
        deployment.kill("a")
        shown = json.loads(deployment.cli("status", "server", "--json"))
        assert shown["last_adopted"]["checkpoint"] == shown["checkpoint"], shown
        assert shown["checkpoint"] in adopted(deployment, "a"), shown
        deployment.start("server", label="a")
        deployment.wait_for(lambda: role(deployment, "a") == "primary", LIVENESS_S, "a again")
        finish(deployment, total)
    finally:
        deployment.stop_all()


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("checksum", "unreadable: .*checkpoint checksum mismatch"),
        ("page", r"it resumes at page \d+, outside chunk \d+"),
    ],
)
def test_bad_candidates_are_refused_and_the_primary_checkpoints_itself(
    tmp_path: Path, fault: str, reason: str
) -> None:
    total = 2000
    deployment = chain_deployment(tmp_path, total)
    refused = re.compile(r"server: checkpoint candidate (\d+) of \S+ refused: " + reason)
    try:
        start_pair(deployment, checkpointer_env={"AMBROSIA_CHECKPOINTER_FAULT": fault})
        own = len(written(deployment, "a"))
        deployment.wait_for(
            lambda: len(refused.findall(deployment.output("a"))) >= 3,
            LIVENESS_S,
            "three refusals",
        )
        deployment.wait_for(
            lambda: (
                "were refused" in deployment.output("a")
                and len(written(deployment, "a")) >= own + 4
            ),
            LIVENESS_S,
            "the primary's own checkpoints after the refusals",
        )
        output = deployment.output("a")
        assert "checkpointing itself: candidate" in output, output
        assert not adopted(deployment, "a"), output
        shown = json.loads(deployment.cli("status", "server", "--json"))
        assert shown["last_adopted"] is None and shown["checkpoint"] in written(deployment, "a")
        finish(deployment, total)
    finally:
        deployment.stop_all()


def test_checkpointer_killed_mid_write_leaves_nothing_adopted(tmp_path: Path) -> None:
    """The checkpointer announces a candidate of which only half was written and dies
    (SIGKILL, from itself: the ``torn`` testing knob); the primary refuses it and goes
    on with checkpoints of its own."""
    total = 1000
    deployment = chain_deployment(tmp_path, total)
    try:
        start_pair(deployment, checkpointer_env={"AMBROSIA_CHECKPOINTER_FAULT": "torn"})
        deployment.wait_for(
            lambda: deployment.processes["b"].poll() is not None,
            LIVENESS_S,
            "b to die",
            ignore=("b",),
        )
        assert deployment.processes["b"].returncode == -signal.SIGKILL
        deployment.stopped["b"] = "kill"
        own = len(written(deployment, "a"))
        deployment.wait_for(
            lambda: len(written(deployment, "a")) >= own + 2, LIVENESS_S, "own checkpoints"
        )
        output = deployment.output("a")
        assert re.search(
            r"checkpoint candidate \d+ of \S+ refused: \d+ bytes where the checkpointer "
            r"announced \d+ \(a partial or replaced write\)",
            output,
        ), output
        assert not adopted(deployment, "a"), output
        finish(deployment, total)
    finally:
        deployment.stop_all()


def test_primary_falls_back_when_the_checkpointer_dies(tmp_path: Path) -> None:
    total = 1200
    deployment = chain_deployment(tmp_path, total)
    try:
        start_pair(deployment)
        deployment.wait_for(lambda: bool(adopted(deployment, "a")), LIVENESS_S, "an adoption")
        deployment.kill("b")
        own = len(written(deployment, "a"))
        deployment.wait_for(
            lambda: len(written(deployment, "a")) >= own + 2, LIVENESS_S, "own checkpoints"
        )
        output = deployment.output("a")
        assert re.search(
            r"checkpointing itself: (checkpointer \S+ has been silent for|candidate \d+ did "
            r"not come before chunk)",
            output,
        ), output
        finish(deployment, total)
    finally:
        deployment.stop_all()
