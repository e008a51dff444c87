"""Live upgrade: move a running instance to new code while its peers see only a pause.

``ambrosia upgrade NAME --app new_module:Class --version V`` starts a process that
becomes the instance's primary running the new code (docs/operations.md, "Upgrading"):

1. It follows the log as a hot standby built with the OLD code (the registered app):
   it loads the latest checkpoint and replays the log to its end while the primary
   keeps serving (``ambrosia.coordinator.standby``).
2. Caught up, at a quiescent point (no handler awaiting a call), it tries the state
   migration on a copy of the old object: ``NewClass.upgrade_from(old)``
   (``ambrosia.Immortal.upgrade_from``, documented there). If it raises, the upgrade
   stops there: nothing was asked of the primary, which keeps serving.
3. It asks the primary to hand over: it records ``upgrade_version = V`` in the catalog.
   The primary checks its catalog record every ``--version-check-s`` (``VersionWatch``),
   sees the request, stops taking input, lets the pages it accepted become durable,
   releases its lease and exits (code 0) with "handed over to version V".
4. The upgrader takes the free lease (the store fences the old writer, as at any
   takeover), reads the last pages with the old code, migrates the state with
   ``upgrade_from`` (``StandbyRuntime._before_serving``), swaps the new object into the
   dispatcher, starts its own chunk and checkpoints under the new code before it serves
   its first page. Peers reconnect and resend by sequence number as after any failover.
5. Once that checkpoint is durable, the catalog's ``current_version`` becomes V and its
   ``app`` the new ``module:Class``; the process goes on serving as the primary.

If the hand-over finds the dispatcher not quiescent, or the migration raises at that
point, the upgrader does not migrate: it serves the old code (the old version keeps
serving, in this process), resets ``upgrade_version`` and says so.

Versions: the catalog's ``current_version`` is the version that runs. ``ambrosia run
--version U`` declares the version of the code it runs; a process whose declared version
differs from the catalog's refuses to start, naming both (``check_version``), and a
running process of another version than a newly recorded ``current_version`` exits
(``VersionWatch``). A process started without ``--version`` runs as the catalog's
version.

``ambrosia upgrade ... --test`` is the paper's upgrade test: without taking over, it
loads the latest checkpoint with the old code, migrates it with ``upgrade_from`` and
replays the rest of the log with the new code, comparing every message the new code
sends with what the recorded run sent (``ambrosia.timetravel.replay_test``). Exit
status 0 when nothing diverged, 1 with the first divergence otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ambrosia.binding import state as state_codec
from ambrosia.binding.dispatcher import Dispatcher
from ambrosia.binding.immortal import Immortal
from ambrosia.catalog import Catalog, InstanceRecord
from ambrosia.coordinator.standby import StandbyRuntime
from ambrosia.errors import AmbrosiaError, ConfigError

__all__ = [
    "UpgradeAbortedError",
    "UpgradePlan",
    "UpgradeRuntime",
    "VersionWatch",
    "check_version",
    "upgrade_test",
]

logger = logging.getLogger("ambrosia.upgrade")

# How long the new primary waits for its first checkpoint before it gives up on it.
_CHECKPOINT_WAIT_S = 60.0


class UpgradeAbortedError(AmbrosiaError):
    """The upgrade stopped before the hand-over; the old version keeps serving."""


@dataclass(frozen=True, slots=True)
class UpgradePlan:
    """What ``ambrosia upgrade`` was asked: the new ``module:Class`` and its version."""

    app: str
    version: int

    def __post_init__(self) -> None:
        if type(self.version) is not int or self.version < 1:
            raise ConfigError(f"--version {self.version!r}: expected an integer >= 1")


def check_version(record: InstanceRecord, version: int | None) -> int:
    """The version this process runs; ConfigError when it is not the catalog's.

    ``version``: what the command line declared (``--version``), None for none (the
    process then runs as the catalog's current version).
    """
    if version is None:
        return record.current_version
    if version != record.current_version:
        newer = (
            "an older"
            if version < record.current_version
            else "a newer version is installed with `ambrosia upgrade`, not"
        )
        raise ConfigError(
            f"{record.name} runs version {record.current_version} (catalog current_version); "
            f"this process is version {version}: refusing to run {newer} version "
            f"(app {record.app or 'unregistered'} is the current code)"
        )
    return version


class VersionWatch:
    """Reads the instance's catalog record every ``interval_s``; stops the process when
    an upgrade asks this primary to hand over (``upgrade_version`` set to another
    version during this process's life) or another version became current.

    A failed read is logged and tried again at the next interval: the catalog being
    unreachable for a while never stops a primary.
    """

    def __init__(
        self,
        catalog: Catalog,
        record: InstanceRecord,
        own_version: int,
        *,
        interval_s: float,
        is_primary: Callable[[], bool],
        stop: Callable[[], None],
    ) -> None:
        if not interval_s > 0:
            raise ConfigError(f"--version-check-s {interval_s!r}: expected a positive number")
        self.catalog = catalog
        self.name = record.name
        self.own_version = own_version
        self.started_upgrade = record.upgrade_version
        self.started_current = record.current_version
        self.interval_s = interval_s
        self.is_primary = is_primary
        self._stop = stop
        self.handed_over_to: int | None = None
        self.superseded_by: int | None = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                record = await self.catalog.get(self.name)
            except AmbrosiaError as error:
                logger.debug("%s: catalog not read: %s", self.name, error)
                continue
            current, wanted = record.current_version, record.upgrade_version
            if current != self.started_current and current != self.own_version:
                self.superseded_by = current
                logger.warning(
                    "%s: version %d is now current (catalog); this process runs version %d: "
                    "stopping",
                    self.name,
                    current,
                    self.own_version,
                )
                self._stop()
                return
            if (
                wanted != self.started_upgrade
                and wanted not in (self.own_version, current)
                and self.is_primary()
            ):
                self.handed_over_to = wanted
                logger.warning(
                    "%s: an upgrade to version %d asks this primary (version %d) to hand "
                    "over: stopping input, making the last pages durable, releasing the lease",
                    self.name,
                    wanted,
                    self.own_version,
                )
                self._stop()
                return

    def exit_message(self) -> str | None:
        """What the process says as it exits because of this watch, if it did."""
        if self.handed_over_to is not None:
            return (
                f"{self.name}: handed over to version {self.handed_over_to}: this process "
                f"(version {self.own_version}) exits"
            )
        if self.superseded_by is not None:
            return (
                f"{self.name}: superseded by version {self.superseded_by}: this process "
                f"(version {self.own_version}) exits"
            )
        return None


def _copy_app(dispatcher: Dispatcher, cls: type[Immortal]) -> Immortal:
    """A copy of the dispatcher's application object, through the checkpoint codec."""
    copy = cls()
    data = state_codec.dump_attributes(dispatcher.app, exclude=set())
    state_codec.load_attributes(copy, data, resolve_proxy=dispatcher.resolve_proxy)
    return copy


def _migrate(old: Immortal, new_class: type[Immortal]) -> Immortal:
    """``new_class.upgrade_from(old)``, checked to be a checkpointable ``new_class``."""
    new = new_class.upgrade_from(old)
    if not isinstance(new, new_class):
        raise TypeError(
            f"{new_class.__qualname__}.upgrade_from returned {type(new).__qualname__}, "
            f"not a {new_class.__qualname__}"
        )
    state_codec.dump_attributes(new, exclude=set())  # refuses what a checkpoint cannot hold
    return new


class UpgradeRuntime(StandbyRuntime):
    """A standby of the old code that takes over with the new code (module doc).

    ``request_handover``: records the request for the primary (the catalog's
    ``upgrade_version``); ``on_upgraded``: the new version's first checkpoint is
    durable (the catalog's ``current_version``); ``on_aborted``: it serves the old code.
    """

    def __init__(
        self,
        *args: Any,
        old_class: type[Immortal],
        new_class: type[Immortal],
        plan: UpgradePlan,
        request_handover: Callable[[], Awaitable[None]],
        on_upgraded: Callable[[], Awaitable[None]],
        on_aborted: Callable[[str], Awaitable[None]],
        **kwargs: Any,
    ) -> None:
        kwargs["role"] = "standby"
        super().__init__(*args, **kwargs)
        self.old_class = old_class
        self.new_class = new_class
        self.plan = plan
        self._request_handover = request_handover
        self._on_upgraded = on_upgraded
        self._on_aborted = on_aborted
        self.requested_at = 0.0
        self.migrated = False
        self.abort_reason: str | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        following = loop.create_task(super().start())
        asking = loop.create_task(self._ask_when_ready())
        try:
            await asyncio.wait({following, asking}, return_when=asyncio.FIRST_COMPLETED)
            if asking.done() and asking.exception() is not None:
                following.cancel()
                with contextlib.suppress(BaseException):
                    await following
                raise asking.exception()  # type: ignore[misc]
            await following
        finally:
            for task in (following, asking):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
        if self.migrated:
            await self._wait_for_checkpoint()
            await self._on_upgraded()
            logger.warning(
                "%s: upgraded to version %d (%s): took over %.0f ms after the hand-over "
                "was asked, checkpoint %d written by the new code",
                self.instance,
                self.plan.version,
                self.plan.app,
                (self.takeover_started_at - self.requested_at) * 1000 if self.requested_at else 0.0,
                self.checkpoints[-1][0],
            )
        else:
            reason = self.abort_reason or "the log was reloaded at the takeover"
            await self._on_aborted(reason)
            logger.error(
                "%s: upgrade to version %d aborted: %s; this process serves the old code",
                self.instance,
                self.plan.version,
                reason,
            )

    async def _ask_when_ready(self) -> None:
        """Caught up and quiescent: try the migration on a copy, then ask the primary."""
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            binding = self.binding
            if self.current_role != "standby" or not isinstance(binding, Dispatcher):
                continue
            if self.lag()[0] or not binding.quiescent:
                continue
            try:
                _migrate(_copy_app(binding, self.old_class), self.new_class)
            except Exception as error:
                raise UpgradeAbortedError(
                    f"{self.instance}: the state migration {self.new_class.__qualname__}."
                    f"upgrade_from failed on a copy of the state after page "
                    f"{self.delivered_sequence}: {type(error).__name__}: {error}; the "
                    "primary was not asked to hand over and keeps serving"
                ) from error
            logger.info(
                "%s: caught up at page %d, migration tried on a copy; asking the primary "
                "to hand over to version %d",
                self.instance,
                self.delivered_sequence,
                self.plan.version,
            )
            self.requested_at = time.monotonic()
            await self._request_handover()
            return

    async def _before_serving(self) -> None:
        binding = self.binding
        assert isinstance(binding, Dispatcher)
        if not binding.quiescent:
            self.abort_reason = (
                f"at the hand-over (page {self.delivered_sequence}) handlers were awaiting "
                "calls, so the state could not be migrated"
            )
            return
        try:
            new = _migrate(binding.app, self.new_class)
        except Exception as error:
            self.abort_reason = (
                f"{self.new_class.__qualname__}.upgrade_from failed at the hand-over (page "
                f"{self.delivered_sequence}): {type(error).__name__}: {error}"
            )
            return
        binding.replace_app(new)
        binding._app_factory = self.new_class
        # The new code's first checkpoint is taken before its first page is delivered.
        binding.checkpoint_when_primary = True
        self.migrated = True

    async def _wait_for_checkpoint(self) -> None:
        loaded = self._loaded_checkpoint
        assert loaded is not None
        deadline = time.monotonic() + _CHECKPOINT_WAIT_S
        while not (self.checkpoints and self.checkpoints[-1][0] > loaded.number):
            if self.failure is not None:
                raise UpgradeAbortedError(
                    f"{self.instance}: stopped before the new version's checkpoint: {self.failure}"
                )
            if time.monotonic() > deadline:
                raise UpgradeAbortedError(
                    f"{self.instance}: the new version's first checkpoint was not written "
                    f"within {_CHECKPOINT_WAIT_S:.0f} s"
                )
            await asyncio.sleep(0.01)


async def upgrade_test(
    log_url: str,
    instance: str,
    old_class: type[Immortal],
    new_class: type[Immortal],
    *,
    checkpoint: int | None = None,
    peer_logs: Mapping[str, str] | None = None,
    store_options: Mapping[str, Any] | None = None,
) -> Any:
    """The paper's upgrade test (module doc); returns a ``ReplayTestReport``."""
    from ambrosia.timetravel import replay_test

    return await replay_test(
        log_url,
        instance,
        new_class,
        checkpoint=checkpoint,
        peer_logs=peer_logs,
        store_options=store_options,
        migrate_from=old_class,
    )


def build_upgrade_runtime(
    catalog: Catalog,
    name: str,
    plan: UpgradePlan,
    old_class: type[Immortal],
    *,
    watch: VersionWatch | None = None,
    **runtime_arguments: Any,
) -> UpgradeRuntime:
    """The upgrader of ``name`` (``ambrosia upgrade``), its catalog updates wired in.

    ``runtime_arguments``: those of ``StandbyRuntime`` but the role and the binding.
    ``watch``: this process's ``VersionWatch``, made with the new version as its own (its
    own request is no request to itself), set back to the old one if the upgrade aborts.
    """
    from ambrosia.binding.dispatcher import in_process
    from ambrosia.host import load_app

    new_class = load_app(plan.app)

    async def update(**fields: Any) -> None:
        record = await catalog.get(name)
        await catalog.register(replace(record, **fields), replace=True)

    async def request_handover() -> None:
        await update(upgrade_version=plan.version)

    async def on_upgraded() -> None:
        await update(app=plan.app, current_version=plan.version, upgrade_version=plan.version)

    async def on_aborted(reason: str) -> None:
        record = await catalog.get(name)
        await update(upgrade_version=record.current_version)
        if watch is not None:
            # This process runs the old code: set after the request is withdrawn, so the
            # watch never takes the request for one addressed to this process.
            watch.own_version = record.current_version

    return UpgradeRuntime(
        binding=in_process(old_class),
        old_class=old_class,
        new_class=new_class,
        plan=plan,
        request_handover=request_handover,
        on_upgraded=on_upgraded,
        on_aborted=on_aborted,
        **runtime_arguments,
    )
