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
   takeover), reads the last pages with the old code, starts its own chunk and serves,
   with the old code still (``UpgradeRuntime._migrate_when_quiet``): an instance that
   awaits calls to others is mid-call at most moments, so the migration waits for the
   first page boundary where no handler awaits a call (and no old checkpoint is being
   written), serving pages to the old code until then (at most ``quiet_wait_s``).
5. At that boundary, with delivery held (``_delivering``), it migrates the state with
   ``upgrade_from``, swaps the new object into the dispatcher and writes a checkpoint of
   it; the metadata swap that points at that checkpoint also records the new version
   (``LOG_VERSION_FIELD``, ``LOG_APP_FIELD``: ``MetadataKeeper.record_fields_from``).
   That swap is the upgrade's commit point. Only then does the catalog's
   ``current_version`` become V and its ``app`` the new ``module:Class``, the new
   object's ``on_become_primary`` run, and delivery resume, to the new code.

No page reaches the new code before its checkpoint is durable, so whatever point the
upgrader dies at, one version's history is the log's: before the commit point the old
code's (its replay of the pages logged meanwhile is what happened: the new code served
nothing), after it the new code's. A start after an upgrader died between the commit
point and the catalog update records the version in the catalog from the log
(``reconcile_with_log``); a standby of the old code refuses to take over a log whose
latest checkpoint names a newer version (``VersionedRuntime``). If the migration raises
at the hand-over, or no quiescent boundary comes within ``quiet_wait_s``, the upgrader
does not migrate: it serves the old code (the old version keeps serving, in this
process), resets ``upgrade_version`` and says so.

Versions: the catalog's ``current_version`` is the version that runs. ``ambrosia run
--version U`` declares the version of the code it runs; a process whose declared version
differs from the catalog's refuses to start, naming both (``check_version``), and a
running process of another version than a newly recorded ``current_version`` exits
(``VersionWatch``). Without ``--version``, the version the class declares
(``VERSION_ATTRIBUTE``, ``__ambrosia_version__``) is taken (``code_version``); a
process with neither runs as the catalog's version.

Testing knob: ``AMBROSIA_UPGRADE_HALT_AT=POINT`` (``HALT_POINTS``: ``taken-over``,
``migrated``, ``checkpointed``, ``committed``) stops the upgrader for good at that point,
so a test can SIGKILL it exactly there. Never set it in production.

``ambrosia upgrade ... --test`` is the paper's upgrade test: without taking over, it
loads the latest checkpoint with the old code, migrates it with ``upgrade_from`` and
replays the rest of the log with the new code, comparing every message the new code
sends with what the recorded run sent (``ambrosia.timetravel.replay_test``). Exit
status 0 when nothing diverged, 1 with the first divergence otherwise, 4 when nothing
diverged but a peer's messages could not be compared (its log unreadable: incomplete).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ambrosia.backends.base import Meta
from ambrosia.binding import state as state_codec
from ambrosia.binding.dispatcher import Dispatcher
from ambrosia.binding.immortal import Immortal
from ambrosia.catalog import Catalog, InstanceRecord
from ambrosia.coordinator.runtime import Runtime
from ambrosia.coordinator.standby import StandbyRuntime
from ambrosia.errors import AmbrosiaError, ConfigError
from ambrosia.log.page import Page

__all__ = [
    "HALT_ENVIRONMENT_VARIABLE",
    "HALT_POINTS",
    "LOG_APP_FIELD",
    "LOG_VERSION_FIELD",
    "VERSION_ATTRIBUTE",
    "LoggedCode",
    "NewerVersionError",
    "UpgradeAbortedError",
    "UpgradePlan",
    "UpgradeRuntime",
    "VersionWatch",
    "VersionedRuntime",
    "check_version",
    "declared_version",
    "logged_code",
    "reconcile_with_log",
    "upgrade_test",
    "withdraw_stale_request",
]

logger = logging.getLogger("ambrosia.upgrade")

# How long the new primary waits for its first checkpoint before it gives up on it.
_CHECKPOINT_WAIT_S = 60.0
# How long the new primary serves the old code waiting for a quiescent page boundary.
QUIET_WAIT_S = 30.0

# The keys of the log's metadata (``Meta.extra``) naming the code that wrote the latest
# checkpoint, recorded in the swap that points at the new version's first checkpoint.
LOG_VERSION_FIELD = "code.version"
LOG_APP_FIELD = "code.app"

# The class attribute by which an immortal declares the version of its code.
VERSION_ATTRIBUTE = "__ambrosia_version__"

# Testing knob: the upgrader stops for good at this point (``_halt_if_asked``).
HALT_ENVIRONMENT_VARIABLE = "AMBROSIA_UPGRADE_HALT_AT"
HALT_POINTS = ("taken-over", "migrated", "checkpointed", "committed")


class UpgradeAbortedError(AmbrosiaError):
    """The upgrade stopped before the new code served; the old version keeps serving
    (or, when the upgrader had taken over, recovers at the next start)."""


class NewerVersionError(ConfigError):
    """This process's code is older than the version that wrote the log's latest
    checkpoint: it refuses to run that log."""


@dataclass(frozen=True, slots=True)
class LoggedCode:
    """The code that wrote the log's latest checkpoint, as its metadata records it."""

    version: int
    app: str | None


def logged_code(meta: Meta | None) -> LoggedCode | None:
    """The version (and ``module:Class``) the log's metadata names; None when no
    upgrade ever recorded one (the log was written by the registered version)."""
    fields = dict(meta.extra) if meta is not None else {}
    text = fields.get(LOG_VERSION_FIELD)
    if text is None:
        return None
    if not text.isdigit():
        raise ConfigError(
            f"the log's metadata names code version {text!r} ({LOG_VERSION_FIELD}): "
            "expected an integer >= 0"
        )
    return LoggedCode(int(text), fields.get(LOG_APP_FIELD))


def declared_version(cls: type[Immortal]) -> int | None:
    """The version ``cls`` declares (``__ambrosia_version__``), None when it declares none."""
    value = getattr(cls, VERSION_ATTRIBUTE, None)
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise ConfigError(
            f"{cls.__module__}.{cls.__qualname__}.{VERSION_ATTRIBUTE} = {value!r}: "
            "expected an integer >= 0"
        )
    return value


def code_version(cls: type[Immortal], version: int | None) -> int | None:
    """The version a process runs: ``--version`` or, when absent, the one ``cls``
    declares; ConfigError when both are given and differ."""
    declared = declared_version(cls)
    if version is None or declared is None or version == declared:
        return declared if version is None else version
    raise ConfigError(
        f"--version {version}, but {cls.__module__}:{cls.__qualname__} declares "
        f"{VERSION_ATTRIBUTE} = {declared}: give one version"
    )


async def reconcile_with_log(
    catalog: Catalog, record: InstanceRecord, meta: Meta | None
) -> InstanceRecord:
    """The catalog record, brought up to the version the log records.

    An upgrade commits when the new code's first checkpoint is durable (the log's
    metadata then names its version); the catalog is updated just after. An upgrader
    killed between the two leaves the catalog behind: the next start finishes the
    record (``current_version`` and ``app``) from the log, so the new version runs and
    an old one is refused. Any other disagreement is refused, named.
    """
    logged = logged_code(meta)
    if logged is None or logged.version <= record.current_version:
        return record
    if logged.version != record.upgrade_version or logged.app is None:
        raise NewerVersionError(
            f"{record.name}: the log's latest checkpoint was written by version "
            f"{logged.version} ({logged.app or 'app not recorded'}), the catalog names "
            f"version {record.current_version} (upgrade_version {record.upgrade_version}): "
            f"correct the registration (ambrosia register {record.name} --replace "
            f"--version {logged.version} --app ...)"
        )
    updated = await catalog.register(
        replace(record, current_version=logged.version, app=logged.app), replace=True
    )
    logger.warning(
        "%s: the upgrade to version %d (%s) was committed in the log but not yet in the "
        "catalog: recorded now",
        record.name,
        logged.version,
        logged.app,
    )
    return updated


@dataclass(frozen=True, slots=True)
class UpgradePlan:
    """What ``ambrosia upgrade`` was asked: the new ``module:Class`` and its version."""

    app: str
    version: int

    def __post_init__(self) -> None:
        if type(self.version) is not int or self.version < 1:
            raise ConfigError(f"--version {self.version!r}: expected an integer >= 1")


def check_version(record: InstanceRecord, version: int | None, *, app: str | None = None) -> int:
    """The version this process runs; ConfigError when it is not the catalog's.

    ``version``: what the command line declared (``--version``) or the class
    (``__ambrosia_version__``), None for neither (the process then runs as the
    catalog's current version). ``app``: the ``module:Class`` that declared it.
    """
    if version is None:
        return record.current_version
    if version != record.current_version:
        declared = f" ({app})" if app else ""
        newer = (
            "an older"
            if version < record.current_version
            else "a newer version is installed with `ambrosia upgrade`, not"
        )
        raise ConfigError(
            f"{record.name} runs version {record.current_version} (catalog current_version); "
            f"this process is version {version}{declared}: refusing to run {newer} version "
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
            if self.is_primary():
                # A request is a change of ``upgrade_version`` seen by a primary: one
                # withdrawn (or left behind by an interrupted upgrade) and made again by
                # the next upgrader is a new request (``withdraw_stale_request``).
                self.started_upgrade = wanted

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


async def withdraw_stale_request(catalog: Catalog, record: InstanceRecord) -> InstanceRecord:
    """An upgrader's start: a request left in the catalog by an upgrade that was
    interrupted before its commit point (``upgrade_version`` above ``current_version``,
    the log not naming it: ``reconcile_with_log`` ran first) is withdrawn, so that this
    upgrader's own request is a change the running primary sees (``VersionWatch``)."""
    if record.upgrade_version == record.current_version:
        return record
    logger.warning(
        "%s: an earlier upgrade to version %d was asked and never committed; withdrawing "
        "that request before asking again",
        record.name,
        record.upgrade_version,
    )
    return await catalog.register(
        replace(record, upgrade_version=record.current_version), replace=True
    )


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


class VersionedRuntime(StandbyRuntime):
    """A runtime of the code of version ``code_version`` (``ambrosia run``).

    It never takes over a log whose latest checkpoint a newer version wrote: a standby
    of the old code still following when an upgrade finished (its latest checkpoint is
    the new code's, ``logged_code``) refuses at its takeover, and a cold start refuses
    before it restores anything, with an error naming both versions, instead of serving
    pages the new code may already have handled.
    """

    def __init__(self, *args: Any, code_version: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.code_version = code_version

    async def _before_serving(self) -> None:
        self._refuse_newer_log()

    def _before_restore(self) -> None:
        # A cold start (``--role primary``, or a standby behind the retention window)
        # checks before it loads the newer version's checkpoint into the old code.
        self._refuse_newer_log()

    def _refuse_newer_log(self) -> None:
        logged = logged_code(None if self.metadata is None else self.metadata.meta)
        own = self.code_version
        if logged is not None and own is not None and logged.version > own:
            raise NewerVersionError(
                f"{self.instance}: the log was upgraded to version {logged.version} "
                f"({logged.app or 'app not recorded'}): its latest checkpoint was written by "
                f"that version; this process runs version {own}: refusing "
                "to take over (start the new version instead)"
            )


class UpgradeRuntime(VersionedRuntime):
    """A standby of the old code that takes over and then moves to the new code
    (module doc).

    ``request_handover``: records the request for the primary (the catalog's
    ``upgrade_version``); ``on_upgraded``: the new version's first checkpoint is
    durable (the catalog's ``current_version``); ``on_aborted``: it serves the old code.
    ``quiet_wait_s``: how long after taking over it waits for a quiescent page boundary
    before it gives up and serves the old code.
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
        quiet_wait_s: float = QUIET_WAIT_S,
        **kwargs: Any,
    ) -> None:
        kwargs["role"] = "standby"
        super().__init__(*args, **kwargs)
        if not quiet_wait_s > 0:
            raise ConfigError(f"quiet_wait_s {quiet_wait_s!r}: expected a positive number")
        self.old_class = old_class
        self.new_class = new_class
        self.plan = plan
        self.quiet_wait_s = quiet_wait_s
        self._request_handover = request_handover
        self._on_upgraded = on_upgraded
        self._on_aborted = on_aborted
        self.requested_at = 0.0
        # Monotonic time before which the primary is not asked: after a stale request was
        # withdrawn, the primary's catalog check must see it withdrawn first.
        self.ask_after = 0.0
        self.migrated = False
        self.migrated_after_page = -1
        self.old_code_pages = 0
        self.abort_reason: str | None = None
        # Held by each page's delivery and by the migration: the migration happens between
        # two pages, and no page reaches the new code before its checkpoint is durable.
        self._delivering = asyncio.Lock()
        self._page_done = asyncio.Event()
        self._settled = False

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
        await self._migrate_when_quiet()

    async def _ask_when_ready(self) -> None:
        """Caught up and quiescent: try the migration on a copy, then ask the primary."""
        while True:
            await asyncio.sleep(
                max(self.settings.poll_interval_s, self.ask_after - time.monotonic())
            )
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
        self._refuse_newer_log()
        await _halt_if_asked("taken-over", self.instance)

    async def _deliver(self, page: Page) -> None:
        if self._settled:
            await super()._deliver(page)
            return
        async with self._delivering:
            await super()._deliver(page)
            if self.committer is not None:
                self.old_code_pages += 1  # served (not replayed) by the old code
        self._page_done.set()

    def _quiet(self, binding: Dispatcher) -> bool:
        """A page boundary where the state can move to the new code: no handler awaits
        a call and no checkpoint of the old code is being written."""
        committer = self.committer
        return (
            binding.quiescent
            and self._checkpoint_task is None
            and committer is not None
            and not committer.switch_pending
        )

    async def _migrate_when_quiet(self) -> None:
        """Serving (the old code, so far): migrate at the first quiescent page boundary.

        A handler awaiting a call at the takeover is no reason to give up: the pages go
        on to the old code until one leaves no handler waiting, then the migration runs
        between that page and the next, and the next waits for the new code's checkpoint.
        """
        binding = self.binding
        assert isinstance(binding, Dispatcher)
        await self._wait_serving()
        deadline = time.monotonic() + self.quiet_wait_s
        try:
            while True:
                self._raise_if_stopped("before the migration")
                async with self._delivering:
                    if self._quiet(binding):
                        await self._migrate_and_commit(binding)
                        return
                if time.monotonic() > deadline:
                    await self._abort(
                        f"no quiescent page boundary (no handler awaiting a call) within "
                        f"{self.quiet_wait_s:.0f} s after taking over"
                    )
                    return
                self._page_done.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._page_done.wait(), self.settings.poll_interval_s)
        finally:
            self._settled = True

    async def _wait_serving(self) -> None:
        while not self.primary.is_set():
            self._raise_if_stopped("before serving")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.primary.wait(), 0.05)

    def _raise_if_stopped(self, when: str) -> None:
        if self.stopped.is_set():
            raise UpgradeAbortedError(
                f"{self.instance}: stopped {when}: {self.failure or 'asked to stop'}"
            )

    async def _migrate_and_commit(self, binding: Dispatcher) -> None:
        """Migrate, checkpoint under the new code, record the version; then serve."""
        try:
            new = _migrate(binding.app, self.new_class)
        except Exception as error:
            await self._abort(
                f"{self.new_class.__qualname__}.upgrade_from failed at the hand-over (after "
                f"page {self.delivered_sequence}): {type(error).__name__}: {error}"
            )
            return
        binding.stop_tasks()  # the old object's background tasks (``on_become_primary``)
        binding.replace_app(new)
        binding._app_factory = self.new_class
        self.migrated = True
        self.migrated_after_page = self.delivered_sequence
        # From here the process runs the new version: a checkpointer's candidates are
        # adopted only from that version (``coordinator.checkpointer``).
        self.code_version = self.plan.version
        await _halt_if_asked("migrated", self.instance)
        number = await self._checkpoint_new_code()
        await _halt_if_asked("checkpointed", self.instance)
        try:
            await self._on_upgraded()
        except AmbrosiaError as error:
            # The log already names the new version (the upgrade's commit point): the
            # next start of the instance records it in the catalog (``reconcile_with_log``).
            logger.warning(
                "%s: the catalog was not updated to version %d (%s); the log records it, "
                "the next start records it in the catalog",
                self.instance,
                self.plan.version,
                error,
            )
        await _halt_if_asked("committed", self.instance)
        await binding.become_primary()
        logger.warning(
            "%s: upgraded to version %d (%s): took over %.0f ms after the hand-over was "
            "asked, migrated after page %d (%d page(s) served by the old code first, "
            "waiting for a quiescent page boundary), checkpoint %d written by the new code",
            self.instance,
            self.plan.version,
            self.plan.app,
            (self.takeover_started_at - self.requested_at) * 1000 if self.requested_at else 0.0,
            self.migrated_after_page,
            self.old_code_pages,
            number,
        )

    async def _checkpoint_new_code(self) -> int:
        """The new code's first checkpoint, durable, with the log's metadata naming the
        new version in the same swap; its number. Nothing is delivered meanwhile."""
        committer = self.committer
        assert committer is not None and self.metadata is not None
        fields = ((LOG_VERSION_FIELD, str(self.plan.version)), (LOG_APP_FIELD, self.plan.app))
        deadline = time.monotonic() + _CHECKPOINT_WAIT_S
        while True:
            while committer.switch_pending or self._checkpoint_task is not None:
                self._raise_if_stopped("before the new version's checkpoint")
                await asyncio.sleep(0.005)
            number = committer.chunk + 1
            self.metadata.record_fields_from(number, fields)
            # Taken here, never left to a checkpointer: its state is the old code's.
            await Runtime._start_checkpoint(self)
            task = self._checkpoint_task
            if task is not None:
                await task
            if self.checkpoints and self.checkpoints[-1][0] >= number:
                return number
            self._raise_if_stopped("before the new version's checkpoint was durable")
            if time.monotonic() > deadline:
                raise UpgradeAbortedError(
                    f"{self.instance}: the new version's first checkpoint was not written "
                    f"within {_CHECKPOINT_WAIT_S:.0f} s; nothing was served by the new code"
                )
            await asyncio.sleep(0.05)  # postponed after its retries: try again

    async def _abort(self, reason: str) -> None:
        self.abort_reason = reason
        await self._on_aborted(reason)
        logger.error(
            "%s: upgrade to version %d aborted: %s; this process serves the old code",
            self.instance,
            self.plan.version,
            reason,
        )


async def _halt_if_asked(point: str, instance: str) -> None:
    """Testing knob (``HALT_ENVIRONMENT_VARIABLE``): stop the upgrade for good at
    ``point`` (one of ``HALT_POINTS``), so that a test can kill the process exactly
    there. Never set it in production."""
    if os.environ.get(HALT_ENVIRONMENT_VARIABLE) == point:
        logger.warning(
            "%s: upgrade halted at %s (testing knob %s)", instance, point, HALT_ENVIRONMENT_VARIABLE
        )
        await asyncio.Event().wait()


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
    old_version: int,
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
        code_version=old_version,
        old_class=old_class,
        new_class=new_class,
        plan=plan,
        request_handover=request_handover,
        on_upgraded=on_upgraded,
        on_aborted=on_aborted,
        **runtime_arguments,
    )
