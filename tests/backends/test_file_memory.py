"""The file and memory log stores: the conformance suite, the URL loader, and takeover."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from ambrosia.backends import LogStore, Meta, open_store
from ambrosia.backends.file import FileLogStore, inline_append_bytes_max
from ambrosia.backends.memory import MemoryLogStore, forget
from ambrosia.errors import (
    ConfigError,
    LeaseHeldError,
    LeaseLostError,
    NotFoundError,
    OffsetMismatchError,
)
from ambrosia.testing.conformance import CONFORMANCE_CHECKS, Check

StoreFactory = Callable[[str], Awaitable[LogStore]]


@pytest.fixture(params=["file", "memory"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> object:
    if request.param == "file":
        yield tmp_path.as_uri()
    else:
        name = f"test-{uuid.uuid4().hex}"
        yield f"memory://{name}"
        forget(name)


@pytest.mark.parametrize(
    ("name", "check"), CONFORMANCE_CHECKS, ids=[n for n, _ in CONFORMANCE_CHECKS]
)
def test_conformance(store_url: str, name: str, check: Check) -> None:
    async def make_store(instance: str) -> LogStore:
        return await open_store(store_url, instance)

    anyio.run(check, make_store)


def test_conformance_runs_every_check() -> None:
    names = [name for name, _ in CONFORMANCE_CHECKS]
    assert len(names) == len(set(names)) >= 10


# -- open_store ------------------------------------------------------------------------


def test_open_store_picks_the_backend_by_scheme(tmp_path: Path) -> None:
    async def main() -> None:
        file_store = await open_store(tmp_path.as_uri(), "alpha")
        memory_store = await open_store("MEMORY://shared", "alpha")
        assert isinstance(file_store, FileLogStore)
        assert isinstance(memory_store, MemoryLogStore)
        assert file_store.instance == memory_store.instance == "alpha"
        assert (tmp_path / "alpha").is_dir()
        assert file_store.url == tmp_path.as_uri()
        await file_store.close()
        await memory_store.close()

    anyio.run(main)
    forget("shared")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://host/dir", "unknown log store scheme 'ftp'"),
        ("/just/a/path", "has no scheme"),
        ("http://[::1/x", "malformed log store URL"),
        ("file://otherhost/dir", "must be file:///absolute/dir"),
        ("file:///", "needs an absolute directory"),
        ("file:///tmp/x?mode=fast", "must be file:///absolute/dir"),
        ("memory://", "must be memory://name"),
        ("memory://name/sub", "must be memory://name"),
    ],
)
def test_open_store_refuses_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        anyio.run(open_store, url, "alpha")
    assert message in str(caught.value)


def test_open_store_names_what_it_accepts() -> None:
    with pytest.raises(ConfigError) as caught:
        anyio.run(open_store, "gopher://x", "alpha")
    for scheme in ("file://", "memory://", "azblob://", "s3://"):
        assert scheme in str(caught.value)


@pytest.mark.parametrize("instance", ["", ".", "..", "a/b", "tab\there", "x" * 256])
def test_open_store_refuses_bad_instance_names(tmp_path: Path, instance: str) -> None:
    with pytest.raises(ConfigError, match="instance name"):
        anyio.run(open_store, tmp_path.as_uri(), instance)


def test_open_store_refuses_unknown_options(tmp_path: Path) -> None:
    async def main() -> None:
        await open_store(tmp_path.as_uri(), "alpha", fsync=False)

    with pytest.raises(ConfigError, match="no options"):
        anyio.run(main)


def test_open_store_reports_a_missing_optional_dependency(tmp_path: Path) -> None:
    # Run in a child so that making the azure packages unimportable cannot leak.
    script = (
        "import sys, anyio\n"
        "sys.modules['azure'] = None\n"
        "sys.modules['azure.storage'] = None\n"
        "sys.modules['azure.storage.blob'] = None\n"
        "sys.modules['aiohttp'] = None\n"
        "from ambrosia.backends import open_store\n"
        "from ambrosia.errors import ConfigError\n"
        "try:\n"
        "    anyio.run(open_store, 'azblob://container/prefix', 'alpha')\n"
        "except ConfigError as error:\n"
        "    print('ConfigError:', error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "ConfigError:" in result.stdout, result.stdout + result.stderr
    assert "ambrosia[azure]" in result.stdout or "not available" in result.stdout


# -- file store specifics --------------------------------------------------------------


def test_file_store_layout_and_durable_files(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path.as_uri(), "alpha")
        lease = await store.acquire_lease()
        await store.create_chunk(lease, 7)
        await store.append(lease, 7, expected_offset=0, data=b"page")
        await store.write_checkpoint(lease, 7, b"state")
        await store.swap_meta(lease, expected=None, new=_meta(lease.epoch))
        await store.close()

    anyio.run(main)
    directory = tmp_path / "alpha"
    names = sorted(os.listdir(directory))
    assert names == ["checkpoint-00000007.ckpt", "chunk-00000007.log", "epoch", "lock", "meta.json"]
    assert (directory / "chunk-00000007.log").read_bytes() == b"page"
    assert (directory / "epoch").read_text() == "1"


def test_file_store_ignores_and_cleans_temporary_files(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path.as_uri(), "alpha")
        leftover = tmp_path / "alpha" / ".checkpoint-00000003.ckpt.tmp-deadbeef"
        leftover.write_bytes(b"half a checkpoint")
        assert await store.list_checkpoints() == []
        await store.acquire_lease()
        assert not leftover.exists()
        await store.close()

    anyio.run(main)


def test_file_store_reacquiring_fences_the_previous_lease(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path.as_uri(), "alpha")
        first = await store.acquire_lease()
        await store.create_chunk(first, 0)
        second = await store.acquire_lease()
        assert second.epoch == first.epoch + 1
        with pytest.raises(LeaseLostError):
            await store.append(first, 0, expected_offset=0, data=b"x")
        await store.append(second, 0, expected_offset=0, data=b"x")
        await store.close()
        with pytest.raises(LeaseLostError):
            await store.append(second, 0, expected_offset=1, data=b"y")

    anyio.run(main)


def test_file_store_epoch_file_change_fences_the_holder(tmp_path: Path) -> None:
    """If the epoch moved on behind our back (lock file removed and taken), we stop."""

    async def main() -> None:
        store = await open_store(tmp_path.as_uri(), "alpha")
        lease = await store.acquire_lease()
        (tmp_path / "alpha" / "epoch").write_text(str(lease.epoch + 1))
        with pytest.raises(LeaseLostError, match="says"):
            await store.create_chunk(lease, 0)
        await store.close()

    anyio.run(main)


def test_file_store_translates_os_errors(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(tmp_path.as_uri(), "alpha")
        lease = await store.acquire_lease()
        with pytest.raises(NotFoundError) as caught:
            await store.read_chunk(3)
        assert isinstance(caught.value.__cause__, FileNotFoundError)
        await store.create_chunk(lease, 0)
        await store.append(lease, 0, expected_offset=0, data=b"abc")
        with pytest.raises(OffsetMismatchError) as mismatch:
            await store.create_chunk(lease, 0)
        assert mismatch.value.actual_offset == 3
        # An append names the chunk file in its errors (built only when one happens).
        with pytest.raises(NotFoundError, match=r"append to .*chunk-00000007\.log"):
            await store.append(lease, 7, expected_offset=0, data=b"x")
        with pytest.raises(OffsetMismatchError, match=r"chunk-00000000\.log") as mismatch:
            await store.append(lease, 0, expected_offset=1, data=b"x")
        assert (mismatch.value.expected_offset, mismatch.value.actual_offset) == (1, 3)
        await store.append(lease, 0, expected_offset=0, data=b"abc")  # a retry that landed
        await store.close()

    anyio.run(main)


def test_file_store_append_does_not_block_the_event_loop(tmp_path: Path) -> None:
    """Large appends run in a worker thread: other tasks keep running meanwhile.

    Pages up to ``inline_append_bytes_max`` are written on the caller's thread (one
    fdatasync is cheaper than two thread hops); everything larger must not block.
    """

    async def main() -> None:
        store = await open_store(tmp_path.as_uri(), "alpha")
        lease = await store.acquire_lease()
        await store.create_chunk(lease, 0)
        ticks = 0
        done = anyio.Event()

        async def tick() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await anyio.sleep(0)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(tick)
            offset = 0
            page = b"x" * (inline_append_bytes_max + 1)
            for _ in range(20):
                await store.append(lease, 0, expected_offset=offset, data=page)
                offset += len(page)
            done.set()
        # Each append awaits a thread; the ticker runs at least once per append.
        assert ticks >= 20
        await store.close()

    anyio.run(main)


def _meta(epoch: int) -> Meta:
    return Meta(checkpoint=None, epoch=epoch)


_HOLDER_SCRIPT = """
import sys, time, anyio
from ambrosia.backends import open_store

async def main():
    store = await open_store(sys.argv[1], "alpha")
    lease = await store.acquire_lease()
    await store.create_chunk(lease, 0)
    await store.append(lease, 0, expected_offset=0, data=b"from the holder")
    print(lease.epoch, flush=True)
    while True:
        time.sleep(1)

anyio.run(main)
"""


@pytest.mark.crash
def test_file_lease_of_a_sigkilled_holder_is_taken_over(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER_SCRIPT, tmp_path.as_uri()],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        holder_epoch = int(holder.stdout.readline())

        async def while_alive() -> None:
            store = await open_store(tmp_path.as_uri(), "alpha")
            with pytest.raises(LeaseHeldError, match=f"process {holder.pid}"):
                await store.acquire_lease(wait_s=0.3)
            await store.close()

        anyio.run(while_alive)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)

        async def after_death() -> None:
            store = await open_store(tmp_path.as_uri(), "alpha")
            lease = await store.acquire_lease(wait_s=5.0)
            assert lease.epoch == holder_epoch + 1
            assert await store.read_chunk(0) == b"from the holder"
            await store.append(lease, 0, expected_offset=15, data=b", then the successor")
            assert await store.read_chunk(0) == b"from the holder, then the successor"
            await store.close()

        anyio.run(after_death)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)
