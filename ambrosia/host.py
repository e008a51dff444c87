"""Running an immortal: catalog lookup, log store, coordinator, signals.

``serve`` is the Python entry point (``ambrosia run`` calls it): it reads the instance's
record from the catalog, opens its log store, starts the coordinator and runs until a
signal or a fatal error (a lost lease, a failed write). Peers are found through the
catalog, their addresses cached for the life of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
from collections.abc import Callable

from ambrosia.backends import open_store
from ambrosia.binding.immortal import Immortal
from ambrosia.catalog import Catalog, default_catalog_url, open_catalog
from ambrosia.coordinator.runtime import Config, Runtime
from ambrosia.errors import ConfigError

logger = logging.getLogger("ambrosia.host")


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"address {address!r} is not HOST:PORT")
    return host, int(port)


def load_app(spec: str) -> type[Immortal]:
    """Import ``module:Class`` and check it is an Immortal subclass."""
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ConfigError(f"--app {spec!r} is not module:Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"cannot import {module_name!r} for --app {spec!r}: {error}") from error
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Immortal)):
        raise ConfigError(f"{spec!r} is not an ambrosia.Immortal subclass")
    return cls


class _CatalogResolver:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.cache: dict[str, tuple[str, int]] = {}

    async def __call__(self, name: str) -> tuple[str, int]:
        address = self.cache.get(name)
        if address is None:
            address = parse_address((await self.catalog.get(name)).address)
            self.cache[name] = address
        return address


async def serve(
    name: str,
    app_factory: Callable[[], Immortal] | None = None,
    *,
    catalog_url: str | None = None,
    log_url: str | None = None,
    config: Config | None = None,
    store_options: dict[str, object] | None = None,
) -> int:
    """Run immortal ``name`` until stopped; returns a process exit code."""
    catalog = await open_catalog(catalog_url or default_catalog_url())
    try:
        record = await catalog.get(name)
        if app_factory is None:
            if record.app is None:
                raise ConfigError(f"{name} has no registered app; pass --app module:Class")
            app_factory = load_app(record.app)
        store = await open_store(log_url or record.log_url, name, **(store_options or {}))
        runtime = Runtime(
            instance=name,
            app_factory=app_factory,
            store=store,
            listen=parse_address(record.address),
            resolve=_CatalogResolver(catalog),
            config=config,
        )
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        await runtime.start()
        stopped = loop.create_task(runtime.stopped.wait())
        asked = loop.create_task(stop.wait())
        await asyncio.wait({stopped, asked}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        asked.cancel()
        await runtime.stop()
        if runtime.failure is not None:
            logger.error("%s stopped: %s", name, runtime.failure)
            return 1
        return 0
    finally:
        await catalog.close()
