"""In-process crash simulation: two runtimes, power-loss storage, seeded crash points.

What FoundationDB's simulation and TigerBeetle's VOPR do for their systems, in the
small: many short runs, each fully described by one seed, each ending with every check
that exactly-once promises. No OS processes: both immortals are real ``Runtime``
objects on one event loop, talking over loopback TCP, logging into real stores on the
power-loss storage of ``ambrosia.testing.powerloss`` (the real ``FileLogStore`` on a
``PowerLossDisk``, or the memory store under a ``PowerLossStore``).

A run
-----
``LedgerClient`` ("client") sends calls 1..N to ``LedgerServer`` ("server"), one per
logged self-call step, every third an awaited call whose result it logs, the rest
forks; ``checkpoint_log_bytes`` is small, so checkpoints and retention happen all the
time. The seed chooses the crash points (``schedule_for``): which instance (server,
client, or both at once) loses its power during its Kth storage operation counted from
the moment the point is armed. A point is armed as soon as the previous one has been
handled, so a small K lands in the recovery that follows the previous crash. A crash:

1. the storage of the victim loses what was not durable (and may tear the write in
   progress), every later storage call of that life raises ``SimulatedCrash``;
2. the runtime is aborted at once, as a dead process is: its tasks are cancelled where
   they are, its sockets are reset, its listener closed; nothing orderly (no drain, no
   lease release: the file lease is a ``flock`` that died with its descriptor, a
   cloud-like lease expires);
3. a new ``Runtime`` starts on what survived.

When the client is done, both instances lose their power once more and restart (what
was acknowledged must survive that too), the run waits until both are quiet, and then
checks everything.

The checks (each violation names what broke)
--------------------------------------------
While the run goes on, at every turn of the driver:

- ``server ledger``: the calls the server executed are exactly 1, 2, 3, ... in order,
  each once (a gap names the lost call numbers, a repeat the duplicated one);
- ``client ledger``: the awaited results the client received are exactly those of its
  awaited calls, in order, each once, with the right values;
- ``output stream``: every message an instance produced to a peer (or to itself) is
  either acknowledged (by that peer, or by its own log) or still buffered (names the
  calls that are neither);
- ``checkpoint``: every checkpoint, read back from storage once written, records for
  each output stream every message it produced and has not seen acknowledged;
- ``runtime failure``: a live runtime that stopped by itself (``LostAcknowledgedError``
  naming the calls, a divergence, a corrupt log);
- ``protocol``: a connection between the two closed for a protocol error (a resent or
  skipped call number, with both numbers). Two correct peers never produce one;
- ``progress``: nothing moved for ``stall_s`` (a generous deadline against hangs only:
  a healthy run moves every few milliseconds); the message says who waits for what.

At the end: the ledgers complete (server: the hash chain of 1..N as
``ambrosia.testing.workloads.expected_chain`` computes it; client: the chain of its
awaited calls), the log audit of every start (``recover``) clean on each log, and each
log replayed offline (``ambrosia.testing.replay``) rebuilding exactly the live state.

Seeds and what they reproduce
-----------------------------
A seed fixes the crash schedule and every power-loss decision. The two runtimes run on
real TCP and the file store on real threads, so the interleaving (and with it which
page a crash tears) is the machine's; a seed reproduces the schedule, and a bug that a
seed catches is caught by it again with high probability (the planted-bug tests pin
seeds that catch their bug every time). Run many::

    python -m ambrosia.testing.simulation --seeds 5000          # both backends
    python -m ambrosia.testing.simulation --seed 1234 --backend file -v

or, from the test suite, ``AMBROSIA_SIM_SEEDS=5000 pytest tests/crash/test_simulation.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import logging
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ambrosia.backends import memory, open_store
from ambrosia.backends.base import LogStore
from ambrosia.backends.file import FileLogStore
from ambrosia.binding import state as state_codec
from ambrosia.binding.dispatcher import Dispatcher, in_process
from ambrosia.binding.immortal import Immortal, rpc
from ambrosia.coordinator.recovery import read_checkpoint
from ambrosia.coordinator.runtime import Config, Runtime
from ambrosia.errors import AmbrosiaError, InstanceNotFoundError
from ambrosia.protocol.outputs import Segment
from ambrosia.testing.powerloss import (
    PowerLossDisk,
    PowerLossStore,
    SimulatedCrash,
    expire_cloud_lease,
)
from ambrosia.testing.replay import replay
from ambrosia.testing.workloads import chain_step, expected_chain, is_async_call

__all__ = [
    "BACKENDS",
    "CLOUD_BACKENDS",
    "CrashPoint",
    "LedgerClient",
    "LedgerServer",
    "Schedule",
    "Verdict",
    "main",
    "run_schedule",
    "run_seed",
    "run_seeds",
    "schedule_for",
    "simulation_config",
]

BACKENDS = ("file", "memory")
# On real emulators (moto in server mode, Azurite), from the environment a deployment
# reads (``AMBROSIA_S3_ENDPOINT_URL`` and AWS credentials; ``AZURE_STORAGE_CONNECTION_STRING``):
# not in ``BACKENDS``, the default set, since they need a service. The CLI starts the
# emulators itself when the environment names none.
CLOUD_BACKENDS = ("s3", "azblob")
# One bucket or container for every run (each run has its own prefix in it).
CLOUD_CONTAINER = "ambrosia-sim"
SERVER = "server"
CLIENT = "client"
CALLS_DEFAULT = 60
STALL_S_DEFAULT = 20.0
# The driver's turn: short, so a violation is seen right after the event that caused it.
_TURN_S = 0.002
# A dead runtime's tasks end within one turn of the loop once cancelled; this only
# bounds a bug that would keep one alive.
_TEARDOWN_S = 30.0
_LOGGER_NAME = "ambrosia"


def simulation_config() -> Config:
    """Small chunks (a checkpoint every few pages, so retention runs all the time) and
    quick reconnection (a peer that died comes back within milliseconds)."""
    return Config(
        checkpoint_log_bytes=2048,
        checkpoints_kept=2,
        reconnect_delay_min_s=0.001,
        reconnect_delay_max_s=0.02,
        lease_wait_s=30.0,
    )


# -- the workload ------------------------------------------------------------------------


class LedgerServer(Immortal):
    """Executes numbered calls and keeps every number it executed, in order."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.chain = ""

    def _take(self, n: int) -> None:
        self.received.append(n)
        self.chain = chain_step(self.chain, n)

    @rpc
    def record(self, n: int) -> int:
        self._take(n)
        return n * 2

    @rpc
    def record_fork(self, n: int) -> None:
        self._take(n)


class LedgerClient(Immortal):
    """Sends calls 1..total to the server, one per logged step; keeps every result."""

    def __init__(self) -> None:
        self.total = 0
        self.sent = 0
        self.results: list[int] = []  # call numbers whose awaited result arrived, in order
        self.result_chain = ""
        self.bad_results: list[tuple[int, int]] = []  # (call, value) with a wrong value
        self.done = False

    async def on_first_start(self) -> None:
        self.this.step.fork(1)

    @rpc
    async def step(self, n: int) -> None:
        if n > self.total:
            self.done = True
            return
        server = self.proxy(LedgerServer, SERVER)
        self.sent = n
        if is_async_call(n):
            value = await server.record(n)
            if value != n * 2:
                self.bad_results.append((n, value))
            self.results.append(n)
            self.result_chain = chain_step(self.result_chain, n)
        else:
            server.record_fork.fork(n)
        self.this.step.fork(n + 1)


def _client_factory(total: int) -> Callable[[], Immortal]:
    def make() -> Immortal:
        client = LedgerClient()
        client.total = total  # part of checkpoint 0, so every later life has it
        return client

    return make


def _ranges(numbers: Sequence[int]) -> str:
    """``1..3, 7`` for [1, 2, 3, 7]: call numbers, readably."""
    parts: list[str] = []
    ordered = sorted(set(numbers))
    index = 0
    while index < len(ordered):
        end = index
        while end + 1 < len(ordered) and ordered[end + 1] == ordered[end] + 1:
            end += 1
        first, last = ordered[index], ordered[end]
        parts.append(str(first) if first == last else f"{first}..{last}")
        index = end + 1
    return ", ".join(parts) if parts else "none"


def check_sequence(what: str, got: Sequence[int], expected: Sequence[int]) -> str | None:
    """Why ``got`` is not a prefix of ``expected`` (lost, repeated, reordered), or None."""
    for index, number in enumerate(got):
        if index >= len(expected):
            return f"{what}: {len(got)} calls executed, only {len(expected)} were made"
        if number == expected[index]:
            continue
        seen = set(got[:index])
        if number in seen:
            return (
                f"{what}: call {number} executed twice (again after call "
                f"{got[index - 1]}, position {index + 1})"
            )
        if number in expected[index:]:
            lost = expected[index : expected.index(number, index)]
            return (
                f"{what}: call {number} executed right after "
                f"{got[index - 1] if index else 'the start'}: calls {_ranges(lost)} were lost"
            )
        return f"{what}: call {number} executed at position {index + 1}, never made there"
    return None


# -- crash schedules ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CrashPoint:
    """``victim`` loses its power during its ``after_operations``-th storage operation
    (counted from when the point is armed); ``both``: the client at the same instant."""

    victim: str  # "server", "client" or "both"
    after_operations: int

    def __str__(self) -> str:
        return f"{self.victim}@{self.after_operations}"


@dataclass(frozen=True, slots=True)
class Schedule:
    seed: int
    backend: str
    points: tuple[CrashPoint, ...]

    def __str__(self) -> str:
        return f"seed {self.seed} ({self.backend}): " + (
            ", ".join(str(point) for point in self.points) or "no crash"
        )


# Storage operations (mutating calls) in one instance's life. A start (lease, audit, new
# chunk, metadata) is about 20 on the file store (each file replaced durably is five:
# create, write, fsync, rename, directory fsync) and 4 on the others; a run of 60 calls
# makes about 170 on the file store and 90 on the others. A point is armed when the one
# before it has been handled, so spans well below a run leave room for several.
_EARLY_OPERATIONS = {"file": 22, "memory": 5, "s3": 5, "azblob": 5}
_RUN_OPERATIONS = {"file": 60, "memory": 30, "s3": 30, "azblob": 30}


def schedule_for(seed: int, backend: str) -> Schedule:
    """The crash points of ``seed``: 1 to 5, a third of them early in a life (recovery)."""
    rng = random.Random(f"schedule:{seed}:{backend}")
    points = []
    for _ in range(rng.randint(1, 5)):
        victim = rng.choices((SERVER, CLIENT, "both"), weights=(4, 3, 2))[0]
        early = rng.random() < 0.35
        span = _EARLY_OPERATIONS[backend] if early else _RUN_OPERATIONS[backend]
        points.append(CrashPoint(victim, rng.randint(1, span)))
    return Schedule(seed, backend, tuple(points))


# -- storage under the runtimes ----------------------------------------------------------


class _Storage(Protocol):
    url: str

    async def open(self, instance: str) -> LogStore: ...

    def arm(self, instance: str, after_operations: int, on_crash: Callable[[], None]) -> None: ...

    def disarm(self, instance: str) -> None: ...

    async def crash(self, instance: str) -> None: ...

    def power_lost(self, instance: str) -> bool:
        """Whether the writer of ``instance`` has lost its power (its death is due)."""
        ...

    def revive(self, instance: str) -> None: ...

    async def close(self) -> None: ...


class _FileStorage:
    def __init__(self, disk: PowerLossDisk, root: Path, instances: Sequence[str]) -> None:
        self.disk = disk
        self.root = root
        self.url = root.as_uri()
        for instance in instances:
            disk.track(root / instance)

    async def open(self, instance: str) -> LogStore:
        store = await open_store(self.url, instance)
        assert isinstance(store, FileLogStore)
        self.disk.bind(store)
        return store

    def arm(self, instance: str, after_operations: int, on_crash: Callable[[], None]) -> None:
        self.disk.arm(self.root / instance, after_operations, on_crash)

    def disarm(self, instance: str) -> None:
        self.disk.disarm(self.root / instance)

    async def crash(self, instance: str) -> None:
        self.disk.crash(self.root / instance)

    def power_lost(self, instance: str) -> bool:
        return self.disk.crashed(self.root / instance)

    def revive(self, instance: str) -> None:
        self.disk.revive(self.root / instance)

    async def close(self) -> None:
        self.disk.forget(self.root)
        shutil.rmtree(self.root, ignore_errors=True)


class _WrappedStorage:
    """Stores under a ``PowerLossStore`` each: crash points are armed on the wrapper."""

    stores: dict[str, PowerLossStore]

    def arm(self, instance: str, after_operations: int, on_crash: Callable[[], None]) -> None:
        self.stores[instance].arm(after_operations, on_crash)

    def disarm(self, instance: str) -> None:
        self.stores[instance].disarm()

    async def crash(self, instance: str) -> None:
        await self.stores[instance].crash()

    def power_lost(self, instance: str) -> bool:
        store = self.stores.get(instance)
        return store is not None and store.crashed

    def revive(self, instance: str) -> None:
        """A new life opens a new store (``open``): nothing to do."""


class _MemoryStorage(_WrappedStorage):
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.name = f"sim-{uuid.uuid4().hex}"
        self.url = f"memory://{self.name}"
        self.stores: dict[str, PowerLossStore] = {}

    async def open(self, instance: str) -> LogStore:
        store = PowerLossStore(memory.MemoryLogStore(self.name, instance), self.rng)
        self.stores[instance] = store
        return store

    async def close(self) -> None:
        memory.forget(self.name)


class _CloudStorage(_WrappedStorage):
    """A cloud store (``s3`` or ``azblob``) on its emulator, under a ``PowerLossStore``.

    A crashed writer's lease would stay taken until its term ran out (up to a minute);
    instead it runs out when the next life opens the store: by then every task of the
    dead life has ended (``_Node.buried``), so nothing of it can renew the lease any
    more, and ``expire_cloud_lease`` leaves the lease as its expiry would, with the dead
    writer's chunks, fences and blob leases in place for the takeover to deal with.
    """

    def __init__(self, backend: str, rng: random.Random) -> None:
        self.rng = rng
        self.url = f"{backend}://{CLOUD_CONTAINER}/sim-{uuid.uuid4().hex}"
        self.stores: dict[str, PowerLossStore] = {}

    async def open(self, instance: str) -> LogStore:
        previous = self.stores.get(instance)
        if previous is not None and previous.crashed:
            await expire_cloud_lease(previous.inner)
            with contextlib.suppress(Exception):
                await previous.inner.close()
        inner = await open_store(self.url, instance, create=True)
        store = PowerLossStore(inner, self.rng, expire_lease=_lease_outlives_its_holder)
        self.stores[instance] = store
        return store

    async def close(self) -> None:
        for store in self.stores.values():
            with contextlib.suppress(Exception):
                await store.inner.close()
        self.stores.clear()


async def _lease_outlives_its_holder() -> None:
    """At a crash the cloud lease stays taken (``_CloudStorage.open`` lets it run out)."""


# -- the runtimes ------------------------------------------------------------------------


def abort(runtime: Runtime) -> list[asyncio.Task[Any]]:
    """What the death of its process does to a runtime, at once: every task stops where it
    is, every connection is reset, the listener closes. Nothing orderly happens (no
    drain, no final checkpoint, no lease release). Returns the tasks to wait for.

    The runtime has no such method (a real process simply dies), so this reaches into
    its parts; the dead runtime is never used again.
    """
    tasks: list[asyncio.Task[Any]] = list(runtime._tasks)
    dispatcher = runtime.dispatcher
    if dispatcher is not None:
        tasks.extend(dispatcher._tasks)
    if runtime._checkpoint_task is not None:
        tasks.append(runtime._checkpoint_task)
    tasks.extend(runtime._admissions)
    committer = runtime.committer
    if committer is not None and committer._write_task is not None:
        tasks.append(committer._write_task)
    for link in runtime.links.values():
        if link.task is not None:
            tasks.append(link.task)
        if link.protocol is not None:
            link.protocol.close(abort=True)
    for incoming in list(runtime.connections):
        if incoming.transport is not None:
            incoming.transport.abort()
    if runtime.server is not None:
        server = runtime.server
        if server._task is not None:
            tasks.append(server._task)
        tasks.extend(server._making)
        server.close()
    for task in tasks:
        task.cancel()
    return tasks


def _stream_hole(next_seq: int, done: int, segments: Sequence[Segment]) -> tuple[str, str] | None:
    """The messages after ``done`` through ``next_seq`` that ``segments`` lack, if any
    (as call-number ranges, with what the segments hold)."""
    expected = done + 1
    for segment in segments:
        if segment.last_seq < expected:
            continue
        if segment.first_seq > expected:
            break
        expected = segment.last_seq + 1
    if expected > next_seq:
        return None
    held = [n for segment in segments for n in range(segment.first_seq, segment.last_seq + 1)]
    return _ranges(range(expected, next_seq + 1)), _ranges(held)


def _forget_frames(task: asyncio.Task[Any]) -> None:
    """Let go of what a dead task's last frames held (a socket its listener had just
    accepted, say): a dead process's kernel closes its sockets at once, while here the
    exception that ended the task would keep them open until the next full collection,
    and a peer connected to one would wait for an answer forever."""
    try:
        task.result()
    except BaseException as error:  # whatever ended it, its frames go
        seen: set[int] = set()
        current: BaseException | None = error
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            traceback.clear_frames(current.__traceback__)
            current = current.__context__


class _Node:
    """One immortal across its lives."""

    def __init__(self, name: str, factory: Callable[[], Immortal]) -> None:
        self.name = name
        self.factory = factory
        self.runtime: Runtime | None = None
        self.boot: asyncio.Task[None] | None = None
        self.dying: list[asyncio.Task[Any]] = []
        self.dead = False
        self.lives = 0

    @property
    def live(self) -> Runtime | None:
        """The runtime of this life once it is primary, None while dead or recovering."""
        runtime = self.runtime
        if self.dead or runtime is None or not runtime.primary.is_set():
            return None
        return runtime

    def app(self) -> Immortal | None:
        runtime = self.runtime
        if self.dead or runtime is None or not isinstance(runtime.binding, Dispatcher):
            return None
        return runtime.binding.app

    def kill(self) -> None:
        if self.dead:
            return
        self.dead = True
        if self.boot is not None:
            self.boot.cancel()
            self.dying.append(self.boot)
        if self.runtime is not None:
            self.dying.extend(abort(self.runtime))

    async def buried(self) -> None:
        """Wait until every task of the dead life has ended.

        Cancelled again every few milliseconds: on Python 3.11 ``asyncio.wait_for`` can
        swallow a cancellation that arrives as its inner task completes, and a link task
        caught that way dials again as if nothing happened (a dead process's link
        cannot: that is what this teardown stands for).
        """
        dying, self.dying = self.dying, []
        pending = {task for task in dying if not task.done()}
        deadline = time.monotonic() + _TEARDOWN_S
        while pending and time.monotonic() < deadline:
            _, pending = await asyncio.wait(pending, timeout=0.01)
            if pending and self.runtime is not None:
                abort(self.runtime)
        if self.runtime is not None:
            abort(self.runtime)  # a connection its listener made while it was dying
        for task in dying:
            if task.done():
                _forget_frames(task)
        if pending:
            stacks = io.StringIO()
            for task in pending:
                task.print_stack(limit=8, file=stacks)
            raise _Violation(
                f"teardown: {len(pending)} task(s) of the dead {self.name} did not end "
                f"within {_TEARDOWN_S:g} s of being cancelled:\n{stacks.getvalue()}"
            )


# -- one run -----------------------------------------------------------------------------


@dataclass(slots=True)
class Verdict:
    """The outcome of one seed."""

    schedule: Schedule
    crashes: list[str] = field(default_factory=list)  # the points that fired, and when
    violations: list[str] = field(default_factory=list)
    calls: int = 0
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    def describe(self) -> str:
        lines = [
            f"{self.schedule}",
            f"  crashes: {', '.join(self.crashes) or 'none fired'}",
            *(f"  VIOLATION {violation}" for violation in self.violations),
            f"  reproduce: python -m ambrosia.testing.simulation --seed {self.schedule.seed} "
            f"--backend {self.schedule.backend} -v",
        ]
        return "\n".join(lines)


class _Violation(Exception):
    pass


class _LogWatch(logging.Handler):
    """Collects what the runtimes log at WARNING and above during one run."""

    # A connection between two correct peers is never closed for these reasons.
    PROTOCOL_REASONS = ("protocol error", "cannot accept input", "refused input")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.protocol_errors: list[str] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        self.lines.append(f"{record.levelname} {record.name}: {message}")
        if record.name == "ambrosia.links" and any(
            reason in message for reason in self.PROTOCOL_REASONS
        ):
            self.protocol_errors.append(message)


class _Run:
    def __init__(
        self,
        schedule: Schedule,
        storage: _Storage,
        *,
        calls: int,
        stall_s: float,
        log_watch: _LogWatch,
    ) -> None:
        self.schedule = schedule
        self.storage = storage
        self.calls = calls
        self.stall_s = stall_s
        self.log_watch = log_watch
        self.verdict = Verdict(schedule)
        self.config = simulation_config()
        self.ports: dict[str, int] = {}
        self.nodes = {
            SERVER: _Node(SERVER, LedgerServer),
            CLIENT: _Node(CLIENT, _client_factory(calls)),
        }
        self.points = list(schedule.points)
        self.armed: CrashPoint | None = None
        # Victims whose power was cut and whether they were primary then, not yet handled.
        self.crashed: list[tuple[str, bool]] = []
        self.loop = asyncio.get_running_loop()
        self.audited: dict[str, int] = {}  # the last checkpoint audited, per instance
        self.awaited = [n for n in range(1, calls + 1) if is_async_call(n)]

    # -- wiring --------------------------------------------------------------------------

    async def resolve(self, name: str) -> tuple[str, int]:
        if name not in self.nodes:
            raise InstanceNotFoundError(name)
        return "127.0.0.1", self.ports.get(name, 1)  # port 1: refused until it listens

    async def launch(self, node: _Node) -> None:
        """A new life: a store on what survived, a runtime, its start in the background."""
        self.storage.revive(node.name)
        store = await self.storage.open(node.name)
        node.runtime = Runtime(
            instance=node.name,
            binding=in_process(node.factory),
            store=store,
            listen=("127.0.0.1", 0),
            resolve=self.resolve,
            config=self.config,
        )
        node.dead = False
        node.lives += 1
        if self.armed is not None and self._victim() == node.name:
            self._arm(self.armed)
        node.boot = self.loop.create_task(self._boot(node, node.runtime))

    async def _boot(self, node: _Node, runtime: Runtime) -> None:
        await runtime.start()
        self.ports[node.name] = runtime.bound_port
        await runtime.primary.wait()

    def _victim(self) -> str:
        """Whose storage counts toward the armed point ("both" counts the server's)."""
        assert self.armed is not None
        return CLIENT if self.armed.victim == CLIENT else SERVER

    def _arm(self, point: CrashPoint) -> None:
        victim = self._victim()
        life = self.nodes[victim].lives

        def cut() -> None:
            # Called by the storage, maybe in a worker thread, inside the failing call.
            self.loop.call_soon_threadsafe(self._power_cut, victim, point, life)

        self.storage.arm(victim, point.after_operations, cut)

    def _power_cut(self, victim: str, point: CrashPoint, life: int) -> None:
        """The victim's process dies now (its storage already lost its power).

        The storage cuts the power in its own thread and this death runs on the loop's
        next turn; meanwhile the run may have moved on: the final power loss disarmed the
        point and took down every life at once, or the victim lives again. A death that
        arrives for a point no longer armed, or for a life already over, has been dealt
        with: it must not kill the next life.
        """
        node = self.nodes[victim]
        if self.armed is not point or node.lives != life:
            return
        runtime = node.runtime
        primary = not node.dead and runtime is not None and runtime.primary.is_set()
        node.kill()
        self.crashed.append((victim, primary))

    def _power_lost(self) -> bool:
        """Whether a victim's storage has lost its power and its death is still queued."""
        return any(self.storage.power_lost(name) for name in self.nodes)

    def _choose_next(self, launching: Sequence[str]) -> None:
        """Arm the next point: now on a running victim, at its launch on a new life."""
        self.armed = self.points.pop(0) if self.points else None
        if self.armed is not None and self._victim() not in launching:
            self._arm(self.armed)

    # -- crashes -------------------------------------------------------------------------

    async def _handle_crash(self) -> None:
        victim, primary = self.crashed.pop(0)
        point = self.armed
        assert point is not None
        victims = [victim]
        if point.victim == "both":
            partner = self.nodes[CLIENT]
            await self.storage.crash(CLIENT)
            partner.kill()
            victims.append(CLIENT)
        phase = "running" if primary else "recovering"
        self.verdict.crashes.append(f"{point} (life {self.nodes[victim].lives}, {phase})")
        await self._restart(victims)

    async def _restart(self, victims: Sequence[str]) -> None:
        for name in victims:
            await self.nodes[name].buried()
        self._choose_next(victims)
        for name in victims:
            await self.launch(self.nodes[name])

    async def final_power_loss(self) -> None:
        """Both lose their power once more when all is done: acknowledged means durable."""
        if self.armed is not None:
            self.storage.disarm(self._victim())
            self.armed = None
        self.points.clear()
        for name, node in self.nodes.items():
            await self.storage.crash(name)
            node.kill()
        self.verdict.crashes.append("both at the end")
        await self._restart(list(self.nodes))

    # -- checks --------------------------------------------------------------------------

    def check(self) -> None:
        if self.log_watch.protocol_errors:
            raise _Violation(f"protocol: {self.log_watch.protocol_errors[0]}")
        for node in self.nodes.values():
            if node.dead or self.storage.power_lost(node.name):
                # Dead, or its store lost the power and its death is queued
                # (``_power_cut`` runs on the loop's next turn): what it saw meanwhile is
                # a dead process's. A call already inside the store when the power went
                # may fail with the store's own error (its lease gone), not SimulatedCrash.
                continue
            if node.boot is not None and node.boot.done():
                error = None if node.boot.cancelled() else node.boot.exception()
                if error is not None and not isinstance(error, SimulatedCrash):
                    raise _Violation(f"runtime failure: {node.name} could not start: {error!r}")
            runtime = node.runtime
            failure = None if runtime is None else runtime.failure
            if failure is not None and not isinstance(failure, SimulatedCrash):
                raise _Violation(
                    f"runtime failure: {node.name} stopped: {type(failure).__name__}: {failure}"
                )
        self._check_ledgers()
        for node in self.nodes.values():
            runtime = node.live
            if runtime is not None:
                self._check_streams(runtime)

    def _apps(self) -> tuple[LedgerServer | None, LedgerClient | None]:
        server = self.nodes[SERVER].app()
        client = self.nodes[CLIENT].app()
        assert server is None or isinstance(server, LedgerServer)
        assert client is None or isinstance(client, LedgerClient)
        return server, client

    def _check_ledgers(self) -> None:
        server, client = self._apps()
        if server is not None:
            problem = check_sequence("server ledger", server.received, range(1, self.calls + 1))
            if problem is not None:
                raise _Violation(problem)
        if client is not None:
            if client.bad_results:
                raise _Violation(
                    f"client ledger: wrong results (call, value): {client.bad_results}"
                )
            problem = check_sequence("client ledger (results)", client.results, self.awaited)
            if problem is not None:
                raise _Violation(problem)

    def _check_streams(self, runtime: Runtime) -> None:
        # The self-stream too: its messages are acknowledged by this instance's own log.
        for destination, stream in runtime.streams.items():
            next_seq, acked_through, segments = stream.snapshot()
            done = max(acked_through, stream.drop_through)
            problem = _stream_hole(next_seq, done, segments)
            if problem is not None:
                raise _Violation(
                    f"output stream: {runtime.instance} produced messages {problem[0]} to "
                    f"{destination} that are neither acknowledged (through {acked_through}) "
                    f"nor buffered (buffered: {problem[1]})"
                )

    async def _audit_checkpoints(self) -> None:
        """Each checkpoint as stored: every output it records is acknowledged or in it."""
        for node in self.nodes.values():
            runtime = node.live
            if runtime is None:
                continue
            for number, _ in list(runtime.checkpoints):
                if number <= self.audited.get(node.name, -1):
                    continue
                try:
                    state = await read_checkpoint(runtime.store, number)
                except (SimulatedCrash, AmbrosiaError):
                    return  # it died meanwhile, or retention took it: the next one
                self.audited[node.name] = number
                for destination, output in state.outputs.items():
                    problem = _stream_hole(output.next_seq, output.acked_through, output.segments)
                    if problem is not None:
                        raise _Violation(
                            f"checkpoint: checkpoint {number} of {node.name} records messages "
                            f"{problem[0]} to {destination} as produced, neither acknowledged "
                            f"(through {output.acked_through}) nor kept (kept: {problem[1]})"
                        )

    def progress(self) -> tuple[int, ...]:
        server, client = self._apps()
        return (
            len(self.verdict.crashes),
            sum(node.lives for node in self.nodes.values()),
            len(server.received) if server is not None else -1,
            client.sent if client is not None else -1,
            len(client.results) if client is not None else -1,
        )

    def finished(self) -> bool:
        server, client = self._apps()
        return (
            all(node.live is not None for node in self.nodes.values())
            and server is not None
            and client is not None
            and client.done
            and len(server.received) == self.calls
        )

    def quiet(self) -> bool:
        for node in self.nodes.values():
            runtime = node.live
            if runtime is None or runtime.committer is None:
                return False
            committer = runtime.committer
            if committer.builder.group_count or not committer.idle.is_set():
                return False
            if runtime.delivered_sequence != committer.next_sequence - 1:
                return False
            for destination, stream in runtime.streams.items():
                if destination != runtime.instance and stream.acked_through < stream.next_seq:
                    return False
        return True

    def stall_report(self) -> str:
        server, client = self._apps()
        parts = [f"no progress for {self.stall_s:g} s"]
        if server is not None:
            parts.append(f"server executed {_ranges(server.received)}")
        if client is not None:
            waiting = " (waiting for its result)" if is_async_call(client.sent) else ""
            parts.append(f"client sent up to {client.sent}{waiting}, done={client.done}")
        for node in self.nodes.values():
            runtime = node.runtime
            if node.dead or runtime is None:
                parts.append(f"{node.name} dead")
                continue
            if not runtime.primary.is_set():
                parts.append(f"{node.name} not primary yet")
            for destination, stream in runtime.streams.items():
                if destination == runtime.instance:
                    continue
                link = runtime.links.get(destination)
                connection = None if link is None else link.protocol
                state = (
                    "no link"
                    if link is None
                    else "not connected"
                    if connection is None
                    else "connected, resume point received"
                    if connection.ready
                    else "connected, waiting for the resume point"
                )
                parts.append(
                    f"{node.name}->{destination}: produced {stream.next_seq}, "
                    f"acknowledged {stream.acked_through}, {state}"
                )
            admitted = sorted(link.source or "?" for link in runtime.connections if link.admitted)
            parts.append(
                f"{node.name} has {len(runtime.connections)} incoming connection(s), "
                f"admitted: {admitted}"
            )
        parts.extend(self.log_watch.lines[-5:])
        return "progress: " + "; ".join(parts)

    # -- the whole run -------------------------------------------------------------------

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        last = self.progress()
        moved_at = time.monotonic()
        while True:
            while self.crashed:
                await self._handle_crash()
            self.check()
            await self._audit_checkpoints()
            if not self.crashed and not self._power_lost() and condition():
                return
            await asyncio.sleep(_TURN_S)
            now = time.monotonic()
            current = self.progress()
            if current != last:
                last, moved_at = current, now
            elif now - moved_at > self.stall_s:
                raise _Violation(self.stall_report())

    async def run(self) -> None:
        self._choose_next((SERVER, CLIENT))
        await self.launch(self.nodes[SERVER])
        await self.launch(self.nodes[CLIENT])
        await self.wait_until(self.finished)
        await self.final_power_loss()
        await self.wait_until(lambda: self.finished() and self.quiet())
        await self.final_checks()

    async def final_checks(self) -> None:
        server, client = self._apps()
        assert server is not None and client is not None
        if server.chain != expected_chain(range(1, self.calls + 1)):
            raise _Violation("server ledger: its hash chain is not the chain of 1..N")
        if client.result_chain != expected_chain(self.awaited):
            raise _Violation(
                "client ledger: its result chain is not the chain of the awaited calls"
            )
        self.verdict.calls = len(server.received)
        live = {
            name: state_codec.dump_attributes(app)
            for name, app in (("server", server), ("client", client))
        }
        for node in self.nodes.values():
            assert node.runtime is not None
            await node.runtime.stop()
        for name, node in self.nodes.items():
            try:
                replayed = await replay(self.storage.url, name, node.factory)
            except Exception as error:
                raise _Violation(f"log audit: {name}: {type(error).__name__}: {error}") from error
            if state_codec.dump_attributes(replayed) != live[name]:
                raise _Violation(
                    f"replay: the log of {name} replays to another state than the live one"
                )

    async def abandon(self) -> None:
        for node in self.nodes.values():
            node.kill()
        for node in self.nodes.values():
            try:
                await node.buried()
            except _Violation as violation:
                self.verdict.violations.append(str(violation))


@contextlib.contextmanager
def _watching_logs() -> Iterator[_LogWatch]:
    """The runtimes' log lines go to the run's watcher, not to the console."""
    logger = logging.getLogger(_LOGGER_NAME)
    watch = _LogWatch()
    previous_propagate = logger.propagate
    logger.addHandler(watch)
    logger.propagate = False
    try:
        yield watch
    finally:
        logger.removeHandler(watch)
        logger.propagate = previous_propagate


def _scratch_root() -> Path:
    """A fresh directory on a RAM disk where there is one (nothing here needs a disk)."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and shm.stat().st_mode & 0o2 else None
    return Path(tempfile.mkdtemp(prefix="ambrosia-sim-", dir=base))


async def _run_async(
    schedule: Schedule, disk: PowerLossDisk | None, *, calls: int, stall_s: float
) -> Verdict:
    rng = random.Random(f"power:{schedule.seed}:{schedule.backend}")
    storage: _Storage
    if schedule.backend == "file":
        assert disk is not None
        disk.rng = rng
        storage = _FileStorage(disk, _scratch_root(), (SERVER, CLIENT))
    elif schedule.backend in CLOUD_BACKENDS:
        storage = _CloudStorage(schedule.backend, rng)
    else:
        storage = _MemoryStorage(rng)
    started = time.monotonic()
    loop = asyncio.get_running_loop()

    def unretrieved(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # A dead life's task that ended with its crash, never awaited by anyone: expected.
        if not isinstance(context.get("exception"), SimulatedCrash):
            watch.lines.append(
                f"ERROR asyncio: {context.get('message')}: {context.get('exception')!r}"
            )

    loop.set_exception_handler(unretrieved)
    with _watching_logs() as watch:
        run = _Run(schedule, storage, calls=calls, stall_s=stall_s, log_watch=watch)
        try:
            await run.run()
        except _Violation as violation:
            run.verdict.violations.append(str(violation))
            await run.abandon()
        finally:
            leftovers = await _end_leftover_tasks(run)
            if leftovers:
                run.verdict.violations.append(leftovers)
            await storage.close()
    run.verdict.elapsed_s = time.monotonic() - started
    return run.verdict


async def _end_leftover_tasks(run: _Run) -> str | None:
    """Cancel whatever the runs' runtimes left behind, again and again until it ends.

    Stopped runtimes leave nothing running, except that on Python 3.11 a link task whose
    cancellation ``asyncio.wait_for`` swallowed keeps dialling (``OutgoingLink.close``
    only cancels); without this, ``asyncio.run`` would wait for it forever.
    """
    current = asyncio.current_task()
    deadline = time.monotonic() + _TEARDOWN_S
    while True:
        for node in run.nodes.values():
            if node.runtime is not None:
                abort(node.runtime)
        pending = {task for task in asyncio.all_tasks() if task is not current}
        if not pending:
            return None
        if time.monotonic() > deadline:
            stacks = io.StringIO()
            for task in pending:
                task.print_stack(limit=8, file=stacks)
            return f"teardown: {len(pending)} task(s) would not end:\n{stacks.getvalue()}"
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.01)


def run_seed(
    seed: int,
    backend: str = "file",
    *,
    calls: int = CALLS_DEFAULT,
    stall_s: float = STALL_S_DEFAULT,
    disk: PowerLossDisk | None = None,
) -> Verdict:
    """Run one seed's schedule (``schedule_for``); see ``run_schedule``."""
    return run_schedule(schedule_for(seed, backend), calls=calls, stall_s=stall_s, disk=disk)


def run_schedule(
    schedule: Schedule,
    *,
    calls: int = CALLS_DEFAULT,
    stall_s: float = STALL_S_DEFAULT,
    disk: PowerLossDisk | None = None,
) -> Verdict:
    """Run one schedule on its own event loop; ``disk`` installed already, or one is made."""
    with contextlib.ExitStack() as stack:
        if schedule.backend == "file" and disk is None:
            disk = stack.enter_context(PowerLossDisk(random.Random(0)).installed())
        verdict = asyncio.run(_run_async(schedule, disk, calls=calls, stall_s=stall_s))
    # The runtimes freeze the collector's view of everything allocated before they became
    # primary (``gc.freeze``); give it back, or thousands of runs keep every dead object.
    gc.unfreeze()
    gc.collect()
    return verdict


@dataclass(slots=True)
class Summary:
    runs: int = 0
    crash_points: int = 0
    calls: int = 0
    elapsed_s: float = 0.0
    failures: list[Verdict] = field(default_factory=list)

    def describe(self) -> str:
        rate = self.crash_points / self.elapsed_s if self.elapsed_s else 0.0
        return (
            f"{self.runs} runs, {self.crash_points} crash points, {self.calls} calls checked, "
            f"{len(self.failures)} with violations, {self.elapsed_s:.1f} s "
            f"({rate:.1f} crash points/s)"
        )


def run_seeds(
    seeds: Sequence[int],
    backends: Sequence[str] = BACKENDS,
    *,
    calls: int = CALLS_DEFAULT,
    stall_s: float = STALL_S_DEFAULT,
    on_verdict: Callable[[Verdict], None] | None = None,
) -> Summary:
    """Run every seed on every backend; a violation does not stop the others."""
    summary = Summary()
    started = time.monotonic()
    with PowerLossDisk(random.Random(0)).installed() as disk:
        for seed in seeds:
            for backend in backends:
                verdict = run_seed(seed, backend, calls=calls, stall_s=stall_s, disk=disk)
                summary.runs += 1
                summary.crash_points += len(verdict.crashes)
                summary.calls += verdict.calls
                if not verdict.ok:
                    summary.failures.append(verdict)
                if on_verdict is not None:
                    on_verdict(verdict)
    summary.elapsed_s = time.monotonic() - started
    return summary


def _emulator_for(backend: str, stack: contextlib.ExitStack) -> None:
    """Point the environment at an emulator for ``backend``, started here (and stopped by
    ``stack``) unless the environment names an endpoint already."""
    from ambrosia.testing import emulators

    if backend == "s3":
        if os.environ.get("AMBROSIA_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL"):
            return
        moto = emulators.start_moto_server()
        stack.callback(moto.stop)
        # moto accepts any credentials; they must exist for the credential chain to pass.
        os.environ.update(
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",
            AMBROSIA_S3_ENDPOINT_URL=moto.endpoint_url,
        )
        os.environ.pop("AWS_PROFILE", None)
    elif not os.environ.get("AZURE_STORAGE_CONNECTION_STRING"):
        azurite = emulators.start_azurite()
        stack.callback(azurite.stop)
        os.environ["AZURE_STORAGE_CONNECTION_STRING"] = azurite.connection_string
        os.environ.pop("AZURE_STORAGE_ACCOUNT_URL", None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ambrosia.testing.simulation",
        description="Seeded in-process crash simulation of two immortals on power-loss storage.",
    )
    parser.add_argument("--seeds", type=int, default=200, help="how many seeds (default 200)")
    parser.add_argument("--first", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument("--seed", type=int, help="run this one seed only")
    parser.add_argument(
        "--backend",
        choices=(*BACKENDS, *CLOUD_BACKENDS, "all"),
        default="all",
        help="all: file and memory; s3 and azblob run on emulators (started if the "
        "environment names none)",
    )
    parser.add_argument("--calls", type=int, default=CALLS_DEFAULT)
    parser.add_argument("--stall-s", type=float, default=STALL_S_DEFAULT)
    parser.add_argument("-v", "--verbose", action="store_true", help="print every run")
    arguments = parser.parse_args(argv)
    seeds = (
        [arguments.seed]
        if arguments.seed is not None
        else range(arguments.first, arguments.first + arguments.seeds)
    )
    backends = BACKENDS if arguments.backend == "all" else (arguments.backend,)

    def report(verdict: Verdict) -> None:
        if arguments.verbose or not verdict.ok:
            print(verdict.describe(), flush=True)

    with contextlib.ExitStack() as emulators:
        for backend in backends:
            if backend in CLOUD_BACKENDS:
                _emulator_for(backend, emulators)
        summary = run_seeds(
            list(seeds),
            backends,
            calls=arguments.calls,
            stall_s=arguments.stall_s,
            on_verdict=report,
        )
    print(summary.describe())
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
