"""``ambrosia-bench standby-cost``: the counting proxy counts what a store really sends.

The proxy sits between a real store and its emulator (moto, Azurite); the counts are
compared with the requests the store's calls are known to make. The full command (a
primary and a standby for two windows) is a long run, not a test.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from ambrosia.backends import open_store
from ambrosia.bench.standbycost import (
    CountingProxy,
    _prices,
    classify_request,
    usd_per_request,
    write_into_doc,
)
from ambrosia.testing.emulators import Azurite, MotoServer

pytestmark = pytest.mark.emulator


def test_requests_are_classed_as_the_stores_bill_them() -> None:
    assert classify_request("s3", "GET", "/b?list-type=2&prefix=x%2Fchunk-") == "list"
    assert classify_request("s3", "GET", "/b/x/meta") == "get"
    assert classify_request("s3", "HEAD", "/b/x/chunk-1/0") == "head"
    assert classify_request("s3", "PUT", "/b/x/lock") == "put"
    assert classify_request("s3", "DELETE", "/b/x/chunk-1/0") == "delete"
    assert classify_request("azblob", "GET", "/a/c?restype=container&comp=list") == "list"
    assert classify_request("azblob", "GET", "/a/c/x/chunk-1") == "read"
    assert classify_request("azblob", "PUT", "/a/c/x/chunk-1?comp=appendblock") == "write"
    assert classify_request("azblob", "PUT", "/a/c/x/lock?comp=lease") == "other"
    assert classify_request("azblob", "HEAD", "/a/c/x/chunk-1") == "other"


def test_the_price_sheets_price_every_class() -> None:
    root = Path(__file__).resolve().parents[2] / "bench_configs"
    s3, _, s3_source = _prices(root / "prices-eks.toml", "s3")
    blob, hours, blob_source = _prices(root / "prices-azure.toml", "blob")
    assert usd_per_request("s3", s3)["list"] == s3["usd_per_1000_puts"] / 1000
    assert set(usd_per_request("azblob", blob)) == {"write", "list", "read", "other", "delete"}
    assert hours == 730.0
    assert "2025" in s3_source and "[blob]" in blob_source and "2025" in blob_source


def test_write_into_doc_replaces_only_the_marked_block(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("a\n<!-- standby-cost:begin -->\nold\n<!-- standby-cost:end -->\nb\n")
    write_into_doc(doc, "| new |\n", "ambrosia-bench standby-cost")
    text = doc.read_text()
    assert "old" not in text and "| new |" in text
    assert text.startswith("a\n") and text.endswith("<!-- standby-cost:end -->\nb\n")


def test_proxy_counts_the_requests_of_an_s3_store(
    s3_env: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = CountingProxy("s3", s3_env.endpoint_url)
    proxy.start()

    async def calls() -> dict[str, int]:
        url = f"s3://ambrosia-count/run-{uuid.uuid4().hex[:8]}"
        store = await open_store(url, "server", create=True)
        try:
            lease = await store.acquire_lease()
            await store.create_chunk(lease, 0)
            proxy.start_window()
            await store.read_meta()  # one GET
            await store.list_chunks()  # one LIST (a page), a HEAD of the fence
            return proxy.snapshot()
        finally:
            await store.close()

    try:
        monkeypatch.setenv("AMBROSIA_S3_ENDPOINT_URL", proxy.endpoint)
        counts = asyncio.run(calls())
    finally:
        proxy.stop()
    assert counts == {"get": 1, "list": 1, "head": 1}


def test_proxy_counts_the_requests_of_an_azblob_store(
    azblob_env: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = CountingProxy("azblob", f"http://127.0.0.1:{azblob_env.blob_port}")
    proxy.start()

    async def calls() -> dict[str, int]:
        url = f"azblob://ambrosia-count/run-{uuid.uuid4().hex[:8]}"
        store = await open_store(url, "server", create=True)
        try:
            await store.acquire_lease()
            proxy.start_window()
            await store.list_chunks()  # one blob listing
            return proxy.snapshot()
        finally:
            await store.close()

    try:
        monkeypatch.setenv(
            "AZURE_STORAGE_CONNECTION_STRING",
            azblob_env.connection_string.replace(
                f"127.0.0.1:{azblob_env.blob_port}/", f"127.0.0.1:{proxy.port}/"
            ),
        )
        counts = asyncio.run(calls())
    finally:
        proxy.stop()
    assert counts == {"list": 1}
