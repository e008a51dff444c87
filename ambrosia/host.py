"""Running an immortal: catalog lookup, log store, coordinator, signals.

``serve`` is the Python entry point (``ambrosia run`` calls it): it reads the instance's
record from the catalog, opens its log store, starts the coordinator and runs until a
signal or a fatal error (a lost lease, a failed write). Peers are found through the
catalog, their addresses cached for the life of the process.

Settings come from the command line, the deployment file (``ambrosia.deployment``) and
the catalog registration, in that order of precedence. Every setting is checked, and the
log store opened (which probes the storage), before the coordinator starts, so a wrong
deployment fails with one clear ``ConfigError`` and leaves nothing behind.

Testing knob: with ``AMBROSIA_FAULTS`` set, the log store is wrapped in a fault
injector that fails calls the way cloud storage does, and the process reports how its
retries behaved (``ambrosia.testing.faults``). Never set it in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

from ambrosia.backends import LogStore, open_store
from ambrosia.binding.immortal import Immortal
from ambrosia.catalog import Catalog, default_catalog_url, open_catalog
from ambrosia.coordinator.runtime import Config, Runtime
from ambrosia.deployment import DeploymentFile, load_deployment, resolve_run
from ambrosia.errors import ConfigError

logger = logging.getLogger("ambrosia.host")

# A testing knob: wrap the log store in a fault injector (see ambrosia.testing.faults).
FAULTS_ENVIRONMENT_VARIABLE = "AMBROSIA_FAULTS"


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
        # Like ``python -m``: an application module in the working directory is found.
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
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
    store_options: Mapping[str, Any] | None = None,
    deployment: DeploymentFile | None = None,
    coordinator: Mapping[str, Any] | None = None,
    create_storage: bool = False,
) -> int:
    """Run immortal ``name`` until stopped; returns a process exit code.

    Settings resolve as ``ambrosia.deployment`` describes: the arguments here (the
    command line) over the deployment file (``deployment``, or the one found by
    ``load_deployment()``) over the catalog registration. ``config``, when given, is
    used whole; otherwise ``coordinator`` holds the command line's Config fields.

    Everything that can be wrong with the settings fails before the coordinator starts:
    the catalog record, the app, the address, and ``open_store``, which probes the
    storage (URL, credentials, container or bucket, reachability) and raises
    ``ConfigError``. ``LeaseHeldError`` means another process runs the instance and
    kept its lease for longer than ``Config.lease_wait_s``.
    """
    deployment = deployment if deployment is not None else load_deployment()
    catalog = await open_catalog(deployment.catalog_for(catalog_url) or default_catalog_url())
    async with contextlib.AsyncExitStack() as cleanup:
        cleanup.push_async_callback(catalog.close)
        record = await catalog.get(name)
        settings = resolve_run(
            name,
            deployment,
            registered_log_url=record.log_url,
            registered_app=record.app,
            log_url=log_url,
            store_options=store_options or {},
            coordinator=coordinator or {},
            create_storage=create_storage,
        )
        run_config = config if config is not None else settings.config
        if app_factory is None:
            if settings.app is None:
                raise ConfigError(f"{name} has no registered app; pass --app module:Class")
            app_factory = load_app(settings.app)
        listen = parse_address(record.address)
        store: LogStore = await open_store(settings.log_url, name, **settings.store_options)
        cleanup.push_async_callback(store.close)
        reporter = None
        faults = os.environ.get(FAULTS_ENVIRONMENT_VARIABLE, "").strip()
        if faults:
            from ambrosia.testing.faults import install_faults

            store, reporter = install_faults(store, faults, run_config.retry_policy)
            logger.warning(
                "%s: testing knob %s=%r is on", name, FAULTS_ENVIRONMENT_VARIABLE, faults
            )
            reporter.start()
            cleanup.push_async_callback(reporter.stop)
        logger.info(
            "%s: log %s, deployment file %s", name, settings.log_url, deployment.path or "none"
        )
        runtime = Runtime(
            instance=name,
            app_factory=app_factory,
            store=store,
            listen=listen,
            resolve=_CatalogResolver(catalog),
            config=run_config,
        )
        return await _run(runtime, name, listen)
    raise AssertionError("unreachable")  # AsyncExitStack does not swallow exceptions


async def _run(runtime: Runtime, name: str, listen: tuple[str, int]) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    try:
        await runtime.start()
    except BaseException as error:
        with contextlib.suppress(Exception):
            await runtime.stop()  # releases the lease if it was taken
        if isinstance(error, OSError):
            host, port = listen
            raise ConfigError(f"{name} cannot listen on {host}:{port}: {error}") from error
        raise
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
