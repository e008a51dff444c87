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
retries behaved (``ambrosia.backends.faults``). Never set it in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import importlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ambrosia.backends import LogStore, open_store
from ambrosia.backends import faults as faults_knob
from ambrosia.binding.dispatcher import in_process
from ambrosia.binding.immortal import Immortal
from ambrosia.catalog import Catalog, InstanceRecord, default_catalog_url, open_catalog
from ambrosia.coordinator.binding_port import Binding, BindingHost
from ambrosia.coordinator.runtime import Config, Runtime
from ambrosia.coordinator.socket_binding import BindingPorts, SocketBinding
from ambrosia.coordinator.standby import Role, StandbyRuntime, StandbySettings
from ambrosia.coordinator.tls import Transport
from ambrosia.deployment import DeploymentFile, load_deployment, resolve_run
from ambrosia.errors import ConfigError, FenceError, ReplayDivergenceError
from ambrosia.operations import serving
from ambrosia.upgrade import UpgradePlan, VersionWatch, build_upgrade_runtime, check_version
from ambrosia.watchdog import HandlerWatchdog, SignalStop

logger = logging.getLogger("ambrosia.host")

# A testing knob: wrap the log store in a fault injector (see ambrosia.backends.faults).
FAULTS_ENVIRONMENT_VARIABLE = faults_knob.FAULTS_ENVIRONMENT_VARIABLE


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"address {address!r} is not HOST:PORT")
    return host, int(port)


def load_app(spec: str) -> type[Immortal]:
    """Import ``module:Class`` and check it is an Immortal subclass.

    Each way it can be wrong has its own ConfigError: not ``module:Class``, a module
    that cannot be imported (missing, or failing as it loads), a class the module does
    not have (the module's immortals are named), a name that is not an Immortal.
    """
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ConfigError(f"--app {spec!r} is not module:Class")
    # Like ``python -m``: an application module in the working directory is found.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and f"{module_name}.".startswith(f"{error.name}."):
            raise ConfigError(
                f"--app {spec!r}: there is no module {error.name!r} on the import path "
                f"(working directory {os.getcwd()}; run from the directory that holds it, "
                "or add that directory to PYTHONPATH)"
            ) from error
        raise ConfigError(
            f"--app {spec!r}: module {module_name!r} fails to import: {error}"
        ) from error
    except Exception as error:  # the application's own code failed as it loaded
        raise ConfigError(
            f"--app {spec!r}: module {module_name!r} fails to import: "
            f"{type(error).__name__}: {error}"
        ) from error
    cls = getattr(module, class_name, None)
    if cls is None:
        immortals = sorted(
            name
            for name, value in vars(module).items()
            if isinstance(value, type)
            and issubclass(value, Immortal)
            and value is not Immortal
            and value.__module__ == module.__name__
        )
        found = f"its immortals: {', '.join(immortals)}" if immortals else "it defines no immortal"
        raise ConfigError(
            f"--app {spec!r}: module {module_name!r} has no class {class_name!r} ({found})"
        )
    if not (isinstance(cls, type) and issubclass(cls, Immortal)):
        raise ConfigError(
            f"--app {spec!r}: {module_name}.{class_name} is not an ambrosia.Immortal subclass"
        )
    return cls


class _CatalogResolver:
    """Peer addresses from the catalog, each read again after ``ttl_s``.

    Re-read because a peer's standby that took over may listen elsewhere (its
    registered address held by a paused old primary) and re-register; a link dials
    again with backoff, so the new address is found within a second or two.
    """

    ttl_s = 1.0

    def __init__(self, catalog: Catalog, transport: Transport) -> None:
        self.catalog = catalog
        self.transport = transport
        self.cache: dict[str, tuple[tuple[str, int], float]] = {}

    async def __call__(self, name: str) -> tuple[str, int]:
        now = time.monotonic()
        cached = self.cache.get(name)
        if cached is not None and now - cached[1] < self.ttl_s:
            return cached[0]
        address = parse_address((await self.catalog.get(name)).address)
        # Peers registered after this process started are checked here, as dialled.
        self.transport.check_peer(address[0], f"peer {name} is at")
        self.cache[name] = (address, now)
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
    transport: Mapping[str, Any] | None = None,
    create_storage: bool = False,
    role: Role = "auto",
    standby: StandbySettings | None = None,
    standby_poll_s: float | None = None,
    separate: BindingEndpoints | None = None,
    version: int | None = None,
    upgrade: UpgradePlan | None = None,
    version_check_s: float = 1.0,
) -> int:
    """Run immortal ``name`` until stopped; returns a process exit code.

    Settings resolve as ``ambrosia.deployment`` describes: the arguments here (the
    command line) over the deployment file (``deployment``, or the one found by
    ``load_deployment()``) over the catalog registration. ``config``, when given, is
    used whole; otherwise ``coordinator`` holds the command line's Config fields.
    ``transport`` holds the command line's transport choice
    (``ambrosia.deployment.command_line_transport``); with ``config`` whole, its ``tls``
    is the TLS setting. Mutual TLS or an explicit plain TCP choice is required.

    Everything that can be wrong with the settings fails before the coordinator starts:
    the catalog record, the app, the address, and ``open_store``, which probes the
    storage (URL, credentials, container or bucket, reachability) and raises
    ``ConfigError``. ``LeaseHeldError`` means another process runs the instance and
    kept its lease for longer than ``Config.lease_wait_s`` (``role`` primary).

    ``role`` (``ambrosia.coordinator.standby``): ``auto`` becomes primary if the lease
    is free and a hot standby otherwise; ``standby`` always starts as a standby;
    ``primary`` waits for the lease and recovers cold, as before standbys existed.

    ``separate``: run the coordinator alone (``ambrosia coordinator``), for a binding
    process that connects to these loopback ports (``ambrosia.coordinator.socket_binding``).
    It starts as primary (``role`` does not apply: no standbys in this mode yet).

    ``version``: the version of the code this process runs (``--version``); refused
    unless it is the catalog's ``current_version`` (None: run as that version). The
    process checks its catalog record every ``version_check_s`` and stops when an
    upgrade asks it, as primary, to hand over, or when another version became current
    (``ambrosia.upgrade``). ``upgrade``: run as the upgrader to a new version instead
    (``ambrosia upgrade``): ``app_factory`` and ``role`` do not apply.
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
            transport=transport or {},
            create_storage=create_storage,
        )
        run_config = config if config is not None else settings.config
        chosen = dataclasses.replace(settings.transport, tls=run_config.tls)
        own_version = record.current_version
        if upgrade is not None:
            own_version = upgrade.version
            if upgrade.version <= record.current_version:
                raise ConfigError(
                    f"{name} runs version {record.current_version}: an upgrade goes to a "
                    f"higher version than that, not {upgrade.version}"
                )
            if settings.app is None:
                raise ConfigError(f"{name} has no registered app to upgrade from")
            app_factory = load_app(settings.app)
        elif separate is None:
            own_version = check_version(record, version)
        if separate is not None:
            pass  # the application is in the binding process
        elif app_factory is None:
            if settings.app is None:
                raise ConfigError(f"{name} has no registered app; pass --app module:Class")
            app_factory = load_app(settings.app)
        listen = parse_address(record.address)
        chosen.check(name, listen[0])
        store: LogStore = await open_store(settings.log_url, name, **settings.store_options)
        cleanup.push_async_callback(store.close)
        reporter = None
        faults = os.environ.get(FAULTS_ENVIRONMENT_VARIABLE, "").strip()
        if faults:
            store, reporter = faults_knob.install_faults(store, faults, run_config.retry_policy)
            logger.warning(
                "%s: testing knob %s=%r is on", name, FAULTS_ENVIRONMENT_VARIABLE, faults
            )
            reporter.start()
            cleanup.push_async_callback(reporter.stop)
        logger.info(
            "%s: log %s, deployment file %s", name, settings.log_url, deployment.path or "none"
        )
        resolver = _CatalogResolver(catalog, chosen)
        if separate is not None:
            ports = separate.or_registered(record).open(name)
            cleanup.callback(ports.close)

            async def next_store() -> LogStore:
                return await open_store(settings.log_url, name, **settings.store_options)

            return await _run_separate(name, ports, store, next_store, listen, resolver, run_config)
        assert app_factory is not None
        arguments: dict[str, Any] = {
            "instance": name,
            "store": store,
            "listen": listen,
            "resolve": resolver,
            "config": run_config,
            "standby": standby or StandbySettings.for_log(settings.log_url, standby_poll_s),
            "on_listening": functools.partial(_publish_address, catalog, record),
        }
        stop = asyncio.Event()
        watch = VersionWatch(
            catalog,
            record,
            own_version,
            interval_s=version_check_s,
            is_primary=lambda: runtime.current_role == "primary",
            stop=stop.set,
        )
        runtime: StandbyRuntime
        if upgrade is not None:
            assert isinstance(app_factory, type)
            runtime = build_upgrade_runtime(
                catalog, name, upgrade, app_factory, watch=watch, **arguments
            )
        else:
            runtime = StandbyRuntime(binding=in_process(app_factory), role=role, **arguments)
        runtime.code_version = own_version
        watching = asyncio.get_running_loop().create_task(watch.run())
        try:
            async with serving(runtime, deployment.operations):
                code = await _run(runtime, name, listen, stop=stop)
        finally:
            watching.cancel()
            with contextlib.suppress(BaseException):
                await watching
        message = watch.exit_message()
        if message is None:
            return code
        logger.warning("%s", message)
        return code if watch.handed_over_to is not None else 1
    raise AssertionError("unreachable")  # AsyncExitStack does not swallow exceptions


async def _publish_address(catalog: Catalog, record: InstanceRecord, address: str) -> None:
    """A new primary listens elsewhere than registered (its address was busy): say where."""
    if address == record.address:
        return
    await catalog.register(dataclasses.replace(record, address=address), replace=True)
    logger.warning("%s: registered address changed to %s", record.name, address)


@dataclasses.dataclass(frozen=True, slots=True)
class BindingEndpoints:
    """Where ``ambrosia coordinator`` listens for its binding process (loopback only).

    Ports 0: any free port (logged). ``receive_fd``/``send_fd``: listening sockets
    inherited from the process that started this one (``ambrosia run --separate``).
    """

    receive_port: int = 0
    send_port: int = 0
    receive_fd: int | None = None
    send_fd: int | None = None
    host: str = "127.0.0.1"

    def or_registered(self, record: InstanceRecord) -> BindingEndpoints:
        """These ports, each one not given taken from the registration (``register
        --receive-port/--send-port``)."""
        return dataclasses.replace(
            self,
            receive_port=self.receive_port or record.receive_port,
            send_port=self.send_port or record.send_port,
        )

    def open(self, name: str) -> BindingPorts:
        if self.receive_fd is not None and self.send_fd is not None:
            return BindingPorts(
                name,
                socket.socket(fileno=self.receive_fd),
                socket.socket(fileno=self.send_fd),
            )
        return BindingPorts.bind(name, self.host, self.receive_port, self.send_port)


async def _run_separate(
    name: str,
    ports: BindingPorts,
    store: LogStore,
    next_store: Callable[[], Awaitable[LogStore]],
    listen: tuple[str, int],
    resolve: _CatalogResolver,
    config: Config,
) -> int:
    """Serve binding after binding: a lost binding ends one runtime life, and the next
    life recovers from the log at once (serving peers) and waits for the next binding."""
    await ports.start()
    logger.info(
        "%s: coordinator alone; binding receive port %d, send port %d",
        name,
        ports.receive_port,
        ports.send_port,
    )
    # Between two lives no SignalStop is installed: a SIGTERM there would kill the
    # process unclean. This handler only notes it; the loop then stops.
    asked_between_lives: list[int] = []
    current_stop: list[asyncio.Event] = []
    loop = asyncio.get_running_loop()

    def note(number: int, frame: Any) -> None:
        asked_between_lives.append(number)
        for event in current_stop:  # a life about to install its own handlers
            loop.call_soon_threadsafe(event.set)

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, note)
    try:
        return await _lives(
            name,
            ports,
            store,
            next_store,
            listen,
            resolve,
            config,
            asked_between_lives,
            current_stop,
        )
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)


async def _lives(
    name: str,
    ports: BindingPorts,
    store: LogStore,
    next_store: Callable[[], Awaitable[LogStore]],
    listen: tuple[str, int],
    resolve: _CatalogResolver,
    config: Config,
    asked_between_lives: list[int],
    current_stop: list[asyncio.Event],
) -> int:
    while True:
        stop = asyncio.Event()
        current_stop[:] = [stop]
        if asked_between_lives:
            stop.set()  # asked since the last check: this life stops as it starts
        lost: list[str] = []

        def on_lost(reason: str, lost: list[str] = lost, stop: asyncio.Event = stop) -> None:
            lost.append(reason)
            stop.set()

        def binding(host: BindingHost, on_lost: Callable[[str], None] = on_lost) -> Binding:
            return SocketBinding(
                host, ports, on_lost=on_lost, message_bytes_max=config.message_bytes_max
            )

        runtime = Runtime(
            instance=name,
            binding=binding,
            store=store,
            listen=listen,
            resolve=resolve,
            config=config,
        )
        signalled = asyncio.Event()
        code = await _run(runtime, name, listen, stop=stop, signalled=signalled)
        # A replay that diverged from the log or the peers diverges again in every
        # recovery: the binding was lost because of it, so no next one is waited for.
        diverged = isinstance(runtime.failure, ReplayDivergenceError)
        if not lost or signalled.is_set() or asked_between_lives or diverged:
            return code
        logger.warning("%s: recovering from its log for the next binding", name)
        store = await next_store()
        if asked_between_lives:
            await store.close()
            return 0


async def _run(
    runtime: Runtime,
    name: str,
    listen: tuple[str, int],
    stop: asyncio.Event | None = None,
    signalled: asyncio.Event | None = None,
) -> int:
    """Start ``runtime`` and serve until it fails or a signal asks it to stop.

    Signals and stuck handlers are watched from threads of their own
    (``ambrosia.watchdog``): SIGTERM ends the process within
    ``Config.shutdown_grace_s`` even when a handler never returns, and such a handler is
    named after ``Config.handler_warning_s``, during replay too.
    """
    loop = asyncio.get_running_loop()
    stop = stop if stop is not None else asyncio.Event()
    signalled = signalled if signalled is not None else asyncio.Event()

    def on_signal() -> None:
        signalled.set()
        stop.set()

    watchdog = HandlerWatchdog(warning_after_s=runtime.config.handler_warning_s)
    signals = SignalStop(
        name=name,
        grace_s=runtime.config.shutdown_grace_s,
        request_stop=functools.partial(_call_soon_threadsafe, loop, on_signal),
    )
    # Python lets only the main thread set signal handlers; ``serve`` run elsewhere (an
    # embedding application's thread) leaves signals to that application.
    on_main_thread = threading.current_thread() is threading.main_thread()
    watchdog.start()
    if on_main_thread:
        signals.install()
    try:
        return await _serve_until_stopped(runtime, name, listen, stop)
    finally:
        if on_main_thread:
            signals.uninstall()
        watchdog.stop()


def _call_soon_threadsafe(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop has closed: nothing left to stop
        loop.call_soon_threadsafe(callback)


async def _serve_until_stopped(
    runtime: Runtime, name: str, listen: tuple[str, int], stop: asyncio.Event
) -> int:
    loop = asyncio.get_running_loop()
    asked = loop.create_task(stop.wait())
    try:
        if not await _start(runtime, name, listen, asked):
            logger.info("%s: stopped during start-up", name)
            return 0
        stopped = loop.create_task(runtime.stopped.wait())
        try:
            await asyncio.wait({stopped, asked}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
    finally:
        asked.cancel()
    await runtime.stop()
    if isinstance(runtime.failure, FenceError):
        # The original calls this suicide: a primary that was paused or cut off past its
        # lease finds a successor's fence in the log, and the store refused its write.
        logger.error(
            "%s: FENCED: another process took over this instance's log while this one was "
            "paused or cut off; exiting without writing another page (%s)",
            name,
            runtime.failure,
        )
        return 1
    if runtime.failure is not None:
        logger.error("%s stopped: %s", name, runtime.failure)
        return 1
    return 0


async def _start(
    runtime: Runtime, name: str, listen: tuple[str, int], asked: asyncio.Task[Any]
) -> bool:
    """Start ``runtime``; False when a stop was asked first (a lease wait can be long)."""
    starting = asyncio.get_running_loop().create_task(runtime.start())
    try:
        await asyncio.wait({starting, asked}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not starting.done():
            starting.cancel()
            await asyncio.wait({starting})
    error = None if starting.cancelled() else starting.exception()
    if error is None and not starting.cancelled():
        return True
    with contextlib.suppress(Exception):
        await runtime.stop()  # releases the lease if it was taken
    if error is None:
        return False
    if isinstance(error, OSError):
        host, port = listen
        raise ConfigError(f"{name} cannot listen on {host}:{port}: {error}") from error
    raise error
