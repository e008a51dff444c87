"""Catalogs of registered immortals, chosen by URL.

``open_catalog(url)`` picks the implementation from the URL's scheme and imports its
module only then, so a deployment that never uses Azure never imports the Azure SDK:

======================  ============================  ================================
URL                     module                        notes
======================  ============================  ================================
``sqlite:///abs.db``    ``ambrosia.catalog.sqlite``   embedded default; stdlib only
``sqlite:///:memory:``  ``ambrosia.catalog.sqlite``   private to the catalog object
``aztable://TABLE``     ``ambrosia.catalog.aztable``  Azure Tables; ``ambrosia[azure]``
``dynamodb://TABLE``    ``ambrosia.catalog.dynamodb`` DynamoDB; ``ambrosia[s3]``;
                                                      optional ``?region=REGION``
======================  ============================  ================================

``check_catalog_url(url)`` checks a URL's form for every scheme without any IO or
third-party import (``open_catalog`` calls it first; ``ambrosia config from-terraform``
checks the file it writes with it).

The contract of a catalog module other than sqlite (``aztable``, ``dynamodb`` and any
later one): it defines ``async def open(url: urllib.parse.SplitResult, **options) -> Catalog``,
receiving the already split and scheme-checked URL and the keyword options given to
``open_catalog``. Its third-party imports may sit at module level: an ``ImportError``
raised while importing it is turned here into a ``ConfigError`` that says which extra
to install. Credentials come from the environment, never from the URL.

Without an explicit URL, tools use ``default_catalog_url()``: the ``AMBROSIA_CATALOG``
environment variable if set, else ``sqlite:///<current directory>/.ambrosia/catalog.db``.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar, cast
from urllib.parse import SplitResult, parse_qsl, urlsplit

import anyio

from ambrosia.catalog.base import Catalog, InstanceRecord
from ambrosia.errors import ConfigError
from ambrosia.names import validate_instance_name

__all__ = [
    "CATALOG_ENVIRONMENT_VARIABLE",
    "Catalog",
    "InstanceRecord",
    "check_catalog_url",
    "default_catalog_url",
    "dynamodb_location",
    "load_catalog_module",
    "open_catalog",
    "run_with_catalog",
    "validate_instance_name",
]

CATALOG_ENVIRONMENT_VARIABLE = "AMBROSIA_CATALOG"

# scheme -> (module, extra that provides its dependencies)
_PLUGIN_SCHEMES: dict[str, tuple[str, str]] = {
    "aztable": ("ambrosia.catalog.aztable", "azure"),
    "dynamodb": ("ambrosia.catalog.dynamodb", "s3"),
}

# Azure's rule for table names: 3 to 63 alphanumerics, starting with a letter.
_AZURE_TABLE_NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9]{2,62}")
# DynamoDB's rule for table names, and the shape of an AWS region name.
_DYNAMODB_TABLE_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{3,255}")
_AWS_REGION_PATTERN = re.compile(r"[a-z]{2,}(-[a-z]+)+-[0-9]{1,2}")

_Result = TypeVar("_Result")


def default_catalog_url() -> str:
    """``$AMBROSIA_CATALOG`` if set and not empty, else the sqlite file under ``./.ambrosia``."""
    configured = os.environ.get(CATALOG_ENVIRONMENT_VARIABLE, "").strip()
    if configured:
        return configured
    return f"sqlite://{Path.cwd() / '.ambrosia' / 'catalog.db'}"


def _split(url: str) -> SplitResult:
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"malformed catalog URL {url!r}: expected scheme://location")
    try:
        return urlsplit(url)
    except ValueError as error:
        raise ConfigError(f"malformed catalog URL {url!r}: {error}") from error


def _sqlite_path(url: str, parts: SplitResult) -> str:
    if parts.netloc or parts.query or parts.fragment or not parts.path.startswith("/"):
        raise ConfigError(
            f"malformed catalog URL {url!r}: expected sqlite:///absolute/path.db "
            "or sqlite:///:memory:"
        )
    if parts.path == "/:memory:":
        return ":memory:"
    if parts.path.endswith("/"):
        raise ConfigError(f"malformed catalog URL {url!r}: the path names a directory")
    return parts.path


def _is_azure_table_location(parts: SplitResult) -> bool:
    return (
        _AZURE_TABLE_NAME_PATTERN.fullmatch(parts.netloc) is not None
        and parts.path in ("", "/")
        and not parts.fragment
    )


def dynamodb_location(parts: SplitResult) -> tuple[str, str | None]:
    """``(table, region or None)`` of a well-formed ``dynamodb://`` URL; else ConfigError."""
    url = parts.geturl()
    if (
        parts.scheme != "dynamodb"
        or _DYNAMODB_TABLE_NAME_PATTERN.fullmatch(parts.netloc) is None
        or parts.path not in ("", "/")
        or parts.fragment
    ):
        raise ConfigError(
            f"malformed catalog URL {url!r}: expected dynamodb://TABLE or "
            "dynamodb://TABLE?region=REGION where TABLE is 3 to 255 letters, digits, "
            "'_', '.' and '-'"
        )
    try:
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        query = [("?", "")]
    if len(query) > 1 or any(key != "region" for key, _ in query):
        raise ConfigError(
            f"malformed catalog URL {url!r}: the only query parameter is region "
            "(credentials come from the AWS credential chain, never from the URL)"
        )
    region = query[0][1] if query else None
    if region is not None and _AWS_REGION_PATTERN.fullmatch(region) is None:
        raise ConfigError(
            f"malformed catalog URL {url!r}: region {region!r} is not an AWS region name "
            "(like eu-west-1)"
        )
    return parts.netloc, region


def check_catalog_url(url: str) -> SplitResult:
    """The split ``url`` if it names a catalog in a well-formed way; ConfigError if not.

    No IO and no third-party import: a catalog whose packages are not installed here is
    checked as far as its URL goes (``open_catalog`` says what to install).
    """
    parts = _split(url)
    if parts.scheme == "sqlite":
        _sqlite_path(url, parts)
    elif parts.scheme == "aztable":
        if not _is_azure_table_location(parts):
            raise ConfigError(
                f"malformed catalog URL {url!r}: expected aztable://TABLE where TABLE is "
                "3 to 63 letters and digits starting with a letter"
            )
    elif parts.scheme == "dynamodb":
        dynamodb_location(parts)
    else:
        known = ", ".join(sorted(["sqlite", *_PLUGIN_SCHEMES]))
        raise ConfigError(
            f"unknown catalog scheme {parts.scheme!r} in {url!r}; known schemes: {known}"
        )
    return parts


def load_catalog_module(module_name: str, extra: str) -> ModuleType:
    """Import a catalog module; its missing dependencies become a ConfigError.

    Public so that the contract can be checked against any module, not only the ones
    that ship.
    """
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        if error.name is not None and (
            error.name == module_name or module_name.startswith(error.name + ".")
        ):
            raise ConfigError(
                f"catalog module {module_name} is not part of this installation"
            ) from error
        raise ConfigError(
            f"catalog module {module_name} needs {error.name or 'a missing package'}: "
            f"install ambrosia[{extra}]"
        ) from error


async def open_catalog(url: str, **options: Any) -> Catalog:
    """Open the catalog named by ``url``. ConfigError for a malformed URL or unknown scheme.

    ``options`` go to the implementation (for sqlite: ``busy_timeout_s``, ``clock``).
    """
    parts = check_catalog_url(url)
    if parts.scheme == "sqlite":
        from ambrosia.catalog.sqlite import SQLiteCatalog

        return await SQLiteCatalog.open(_sqlite_path(url, parts), **options)
    module_name, extra = _PLUGIN_SCHEMES[parts.scheme]
    module = load_catalog_module(module_name, extra)
    opener = getattr(module, "open", None)
    if opener is None:
        raise ConfigError(f"catalog module {module_name} defines no open(url, **options)")
    return cast(Catalog, await opener(parts, **options))


def run_with_catalog(
    url: str | None,
    operation: Callable[[Catalog], Awaitable[_Result]],
    **options: Any,
) -> _Result:
    """Synchronous convenience for command-line tools: open, run ``operation``, close.

    ``url`` None means ``default_catalog_url()``. Starts its own event loop, so it must
    not be called from async code.
    """

    async def main() -> _Result:
        catalog = await open_catalog(url or default_catalog_url(), **options)
        try:
            return await operation(catalog)
        finally:
            await catalog.close()

    return anyio.run(main)
