"""Choosing a catalog by URL, and what happens when it cannot be chosen."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ambrosia.catalog import (
    InstanceRecord,
    default_catalog_url,
    open_catalog,
    run_with_catalog,
)
from ambrosia.catalog import load_catalog_module as load_module
from ambrosia.catalog.base import Catalog
from ambrosia.errors import ConfigError

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://relative.db",
        "sqlite:relative.db",
        "sqlite:///tmp/dir/",
        "sqlite:///tmp/x.db?mode=ro",
        "catalog.db",
        "",
        "aztable://",
        "aztable://1table",
        "aztable://ab",
        "aztable://table/extra",
        "dynamodb://",
        "dynamodb://ab",
        "dynamodb://table?region=nowhere",
    ],
)
async def test_malformed_urls(url: str) -> None:
    with pytest.raises(ConfigError, match="malformed catalog URL"):
        await open_catalog(url)


async def test_unknown_scheme_lists_the_known_ones() -> None:
    known = r"unknown catalog scheme 'postgres'.*aztable, dynamodb, sqlite"
    with pytest.raises(ConfigError, match=known):
        await open_catalog("postgres://db/catalog")


def test_missing_third_party_dependency_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fake_catalog_plugin.py").write_text(
        "import a_dependency_that_is_not_installed_anywhere\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"install ambrosia\[azure\]") as caught:
        load_module("fake_catalog_plugin", "azure")
    assert "a_dependency_that_is_not_installed_anywhere" in str(caught.value)
    assert isinstance(caught.value.__cause__, ImportError)
    sys.modules.pop("fake_catalog_plugin", None)


def test_missing_catalog_module_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not part of this installation"):
        load_module("ambrosia.catalog.no_such_backend", "azure")


def test_default_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMBROSIA_CATALOG", "sqlite:///srv/catalog.db")
    assert default_catalog_url() == "sqlite:///srv/catalog.db"


def test_default_url_under_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AMBROSIA_CATALOG", raising=False)
    monkeypatch.chdir(tmp_path)
    url = default_catalog_url()
    assert url == f"sqlite://{tmp_path}/.ambrosia/catalog.db"


def test_run_with_catalog_uses_the_default_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AMBROSIA_CATALOG", raising=False)
    monkeypatch.chdir(tmp_path)

    async def register(catalog: Catalog) -> InstanceRecord:
        return await catalog.register(InstanceRecord("a", "127.0.0.1:1", "file:///logs"))

    async def listing(catalog: Catalog) -> list[InstanceRecord]:
        return await catalog.list()

    stored = run_with_catalog(None, register)
    assert (tmp_path / ".ambrosia" / "catalog.db").is_file()
    assert run_with_catalog(None, listing) == [stored]
