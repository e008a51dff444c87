"""``ambrosia log``: the inspector against real logs written by real processes.

A chain workload (``ambrosia.testing.workloads``) runs as two processes with a small
checkpoint threshold, so the logs have several checkpoints and chunks. The report is
checked against what the store holds (read independently) and against what the
workload did (200 calls, 66 of them awaited); then copies of the log are damaged (a
torn tail, a flipped bit in an old chunk and in the chunk recovery reads, a missing
chunk) and each damage must be reported, with the documented outcome on the command
line.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ambrosia.backends import open_store
from ambrosia.errors import LogCorruptError, LogGapError
from ambrosia.inspect import describe_log
from ambrosia.log.page import HEADER_BYTES
from ambrosia.testing.harness import Deployment
from ambrosia.testing.workloads import is_async_call

TOTAL = 200


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """A finished chain run: server and client logs with several checkpoints and chunks."""
    deployment = Deployment(
        tmp_path_factory.mktemp("inspect"),
        env={"AMBROSIA_CHAIN_TOTAL": str(TOTAL)},
        run_args=("--checkpoint-log-bytes", "3000", "--checkpoints-kept", "3"),
    )
    deployment.register("server", "ambrosia.testing.workloads:ChainServer")
    deployment.register("client", "ambrosia.testing.workloads:ChainClient")
    try:
        deployment.start("server")
        deployment.start("client")

        def done() -> bool:
            status = deployment.status("client")
            return bool(status and status["done"])

        deployment.wait_for(done, 60, "the chain client to finish")  # takes ~1 s here
        assert deployment.terminate("client") == 0
        assert deployment.terminate("server") == 0
    finally:
        deployment.stop_all()
    return deployment


def describe(log_url: str, instance: str, **options: bool) -> str:
    return asyncio.run(describe_log(log_url, instance, **options))


def run_cli(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ambrosia.cli", "log", *args],
        env=deployment.env,
        capture_output=True,
        text=True,
        check=False,
    )


async def store_facts(
    log_url: str, instance: str
) -> tuple[int, list[tuple[int, int]], dict[int, int]]:
    """(latest checkpoint, [(chunk, size)], {checkpoint: size}) straight from the store."""
    store = await open_store(log_url, instance)
    try:
        meta, _ = await store.read_meta()
        assert meta is not None and meta.checkpoint is not None
        chunks = [(chunk.number, chunk.size_bytes) for chunk in await store.list_chunks()]
        checkpoints = {
            number: len(await store.read_checkpoint(number))
            for number in await store.list_checkpoints()
        }
        return meta.checkpoint, chunks, checkpoints
    finally:
        await store.close()


def copy_log(deployment: Deployment, tmp_path: Path) -> tuple[str, Path]:
    """A private copy of the whole log location: (its URL, the server's directory)."""
    copy = tmp_path / "log"
    shutil.copytree(deployment.directory / "log", copy)
    return copy.as_uri(), copy / "server"


def chunk_path(directory: Path, number: int) -> Path:
    return directory / f"chunk-{number:08d}.log"


def flip_body_byte(path: Path) -> None:
    """Damage the first page's body; the pages after it stay intact (corruption)."""
    data = bytearray(path.read_bytes())
    data[HEADER_BYTES + 2] ^= 0x10
    path.write_bytes(bytes(data))


# -- a healthy log ---------------------------------------------------------------------------


@pytest.mark.parametrize("instance", ["server", "client"])
def test_report_matches_the_store(deployment: Deployment, instance: str) -> None:
    report = describe(deployment.log_url, instance)
    latest, chunks, checkpoints = asyncio.run(store_facts(deployment.log_url, instance))
    assert report.startswith(f"log of {instance} at {deployment.log_url}\n")
    assert f"metadata: latest checkpoint {latest}, epoch 1" in report
    assert len(checkpoints) == 3 and len(chunks) >= 3
    for number, size in checkpoints.items():
        assert f"\n  checkpoint {number}: {size} bytes, epoch 1, resumes at page " in report
    for number, size in chunks:
        assert f"\n  chunk {number}: {size} bytes, " in report
    assert f"recovery would load checkpoint {latest} and replay " in report
    assert "PROBLEMS" not in report and "torn tail" not in report


def test_watermarks_count_what_the_workload_did(deployment: Deployment) -> None:
    awaited = sum(1 for n in range(1, TOTAL + 1) if is_async_call(n))
    server = describe(deployment.log_url, "server")
    # Every call, fork or awaited, is one message from client to server.
    assert f"  inputs (last logged seq per source):\n    client: {TOTAL}\n" in server
    client = describe(deployment.log_url, "client")
    # One result per awaited call; self-calls: the first start plus steps 1..TOTAL + 1.
    assert f"    server: {awaited}\n" in client
    assert f"    client: {TOTAL + 2}\n" in client
    trims = re.search(r"latest logged trim point per destination\):\n    server: (\d+)\n", client)
    assert trims is not None and 0 < int(trims.group(1)) <= TOTAL


def test_pages_listing(deployment: Deployment) -> None:
    report = describe(deployment.log_url, "server", pages=True)
    counted = sum(int(n) for n in re.findall(r"\n  chunk \d+: \d+ bytes, (\d+) page\(s\)", report))
    sequences = [
        int(n) for n in re.findall(r"\n  page (\d+): epoch 1, offset \d+, \d+ bytes", report)
    ]
    assert len(sequences) == counted > 0
    assert sequences == list(range(sequences[0], sequences[0] + counted))
    groups = re.findall(r"\n    group client (\d+)\.\.(\d+): (\d+) message\(s\)", report)
    assert groups and all(int(last) - int(first) + 1 == int(n) for first, last, n in groups)
    assert int(groups[-1][1]) == TOTAL
    assert "\n    trims: client " in report


def test_command_line_prints_the_report(deployment: Deployment) -> None:
    for options in ((), ("--pages",)):
        done = run_cli(deployment, "server", *options)
        assert done.returncode == 0, done.stderr
        assert done.stdout == describe(deployment.log_url, "server", pages=bool(options))


def test_never_started_instance() -> None:
    async def empty() -> str:
        return await describe_log("memory://inspect-empty", "nobody")

    report = asyncio.run(empty())
    assert "metadata: none (the instance never started)" in report
    assert "never started: recovery would begin a new log" in report


# -- damaged copies --------------------------------------------------------------------------


def test_torn_tail_is_reported_not_an_error(deployment: Deployment, tmp_path: Path) -> None:
    url, directory = copy_log(deployment, tmp_path)
    _, chunks, _ = asyncio.run(store_facts(url, "server"))
    last, size = chunks[-1]
    with chunk_path(directory, last).open("ab") as chunk:
        chunk.write(b"AMBP" + bytes(20))  # a page header cut short
    report = describe(url, "server")
    assert f"torn tail: 24 byte(s) after offset {size} ignored" in report
    assert "short header" in report
    done = run_cli(deployment, "server", "--log", url)
    assert done.returncode == 0, done.stderr
    assert "torn tail" in done.stdout


def test_corrupt_old_chunk_is_refused_like_recovery_does(
    deployment: Deployment, tmp_path: Path
) -> None:
    """The oldest kept chunk is what the older kept checkpoint replays from: recovery
    audits it too, so the inspector and the start refuse alike."""
    url, directory = copy_log(deployment, tmp_path)
    _, chunks, _ = asyncio.run(store_facts(url, "server"))
    oldest = chunks[0][0]
    flip_body_byte(chunk_path(directory, oldest))
    with pytest.raises(LogCorruptError) as raised:
        describe(url, "server")
    assert f"chunk {oldest}" in raised.value.where and raised.value.offset == 0
    assert "PROBLEMS (1):" in str(raised.value)  # the report rides along
    report = describe(url, "server", check=False)
    assert re.search(rf"\n  chunk {oldest}: \d+ bytes, UNREADABLE\n", report)
    assert "recovery would refuse to start: log corrupt in " in report

    done = run_cli(deployment, "server", "--log", url)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("ambrosia: error: log corrupt in ")
    assert "body checksum mismatch, yet an intact page follows" in done.stderr
    assert "\nchunks (" in done.stderr and "\nPROBLEMS (1):\n" in done.stderr


def test_corrupt_chunk_that_recovery_reads(deployment: Deployment, tmp_path: Path) -> None:
    url, directory = copy_log(deployment, tmp_path)
    _, chunks, _ = asyncio.run(store_facts(url, "server"))
    # The newest chunk with more than one page: damage to its first page is corruption
    # (an intact page follows), not a torn tail.
    last = max(number for number, size in chunks if size > 2 * 80)
    flip_body_byte(chunk_path(directory, last))
    report = describe(url, "server", check=False)
    assert "recovery would refuse to start: log corrupt in " in report
    assert f"chunk {last} at byte offset 0" in report
    with pytest.raises(LogCorruptError):
        describe(url, "server")


def test_missing_chunk_is_a_gap(deployment: Deployment, tmp_path: Path) -> None:
    url, directory = copy_log(deployment, tmp_path)
    _, chunks, _ = asyncio.run(store_facts(url, "server"))
    middle = chunks[1][0]
    chunk_path(directory, middle).unlink()
    with pytest.raises(LogGapError, match=rf"chunk {middle} is missing from "):
        describe(url, "server")
    done = run_cli(deployment, "server", "--log", url)
    assert done.returncode == 2
    assert "LogGapError" in done.stderr
