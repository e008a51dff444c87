"""Log stores, chosen per deployment by URL, loaded lazily by scheme.

=================================  ==========================  ===========================
URL                                module                      needs
=================================  ==========================  ===========================
``file:///abs/dir``                ``ambrosia.backends.file``     nothing (local disk, or an
                                                               Azure Files / NFS mount)
``memory://name``                  ``ambrosia.backends.memory``   nothing (tests; one process)
``azblob://container/prefix``      ``ambrosia.backends.azblob``   ``pip install ambrosia[azure]``
``s3://bucket/prefix``             ``ambrosia.backends.s3``       ``pip install ambrosia[s3]``
=================================  ==========================  ===========================

The contract every backend module follows
-----------------------------------------
A backend module exposes one coroutine function and one plain function::

    async def open(url: urllib.parse.SplitResult, instance: str, **options: object) -> LogStore
    def check_url(url: urllib.parse.SplitResult) -> object


``url`` is the already split URL (scheme lower-cased); ``instance`` has passed
``ambrosia.names.validate_instance_name`` (the one rule for every layer). It returns a
ready store for that one instance (see ``ambrosia.backends.base``) or raises
``ConfigError`` for a URL, option or credential it cannot use. Unknown options are a
``ConfigError`` too, so a typo never goes unnoticed. The module imports its third-party
dependencies at module level: ``open_store`` turns an ``ImportError`` of those into a
``ConfigError`` naming the extra to install. Foreign exceptions raised later (OSError,
azure.core, botocore) are translated inside the backend into the ``StorageError`` tree
with the cause chained. Every backend must pass ``ambrosia.testing.conformance``.

``check_url`` checks the URL's form without any IO and raises ``ConfigError`` naming what
is wrong (``open`` calls it first). ``check_store_url`` runs it where nothing is opened:
``ambrosia register``, and ``ambrosia-bench`` before it starts any process.
"""

from __future__ import annotations

import importlib
import urllib.parse
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import cast

from ambrosia.backends.base import ChunkInfo, Lease, LogStore, Meta
from ambrosia.errors import ConfigError
from ambrosia.names import INSTANCE_NAME_BYTES_MAX, validate_instance_name

__all__ = [
    "INSTANCE_NAME_BYTES_MAX",
    "ChunkInfo",
    "Lease",
    "LogStore",
    "Meta",
    "check_store_url",
    "open_store",
    "validate_instance_name",
]

# scheme -> (module, extra that provides its dependencies, or None)
_BACKENDS: dict[str, tuple[str, str | None]] = {
    "file": ("ambrosia.backends.file", None),
    "memory": ("ambrosia.backends.memory", None),
    "azblob": ("ambrosia.backends.azblob", "azure"),
    "s3": ("ambrosia.backends.s3", "s3"),
}

_ACCEPTED = "file:///absolute/dir, memory://name, azblob://container/prefix, s3://bucket/prefix"


def _split(url: str) -> urllib.parse.SplitResult:
    try:
        split = urllib.parse.urlsplit(url)
    except ValueError as error:
        raise ConfigError(
            f"malformed log store URL {url!r}: {error}; accepted: {_ACCEPTED}"
        ) from error
    if not split.scheme:
        raise ConfigError(f"log store URL {url!r} has no scheme; accepted: {_ACCEPTED}")
    return split


def _backend_module(url: str, split: urllib.parse.SplitResult) -> ModuleType:
    scheme = split.scheme.lower()
    backend = _BACKENDS.get(scheme)
    if backend is None:
        raise ConfigError(f"unknown log store scheme {scheme!r} in {url!r}; accepted: {_ACCEPTED}")
    module_name, extra = backend
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        missing = error.name or ""
        if extra is None or missing == "ambrosia" or missing.startswith("ambrosia."):
            raise ConfigError(
                f"log store backend {scheme!r} is not available in this installation: {error}"
            ) from error
        raise _MissingExtra(
            f"log store scheme {scheme!r} needs a package that is not installed "
            f"({missing}): pip install 'ambrosia[{extra}]'"
        ) from error


class _MissingExtra(ConfigError):
    """The backend's third-party packages are not installed here."""


def check_store_url(url: str) -> None:
    """Check that ``url`` names a log store in a well-formed way, without opening it.

    ConfigError for an unknown scheme or a malformed URL (a relative ``file://`` path,
    a bad bucket name). A backend whose packages are not installed on this machine (a
    catalog kept elsewhere than where the immortal runs) is checked as far as its
    scheme; ``open_store`` says what to install.
    """
    split = _split(url)
    try:
        module = _backend_module(url, split)
    except _MissingExtra:
        return
    module.check_url(split._replace(scheme=split.scheme.lower()))


async def open_store(url: str, instance: str, **options: object) -> LogStore:
    """Open the log store of ``instance`` at ``url``; the scheme picks the backend."""
    split = _split(url)
    module = _backend_module(url, split)
    validate_instance_name(instance)
    opener = cast(Callable[..., Awaitable[LogStore]], module.open)
    return await opener(split._replace(scheme=split.scheme.lower()), instance, **options)
