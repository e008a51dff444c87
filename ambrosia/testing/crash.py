"""The crash scenario, parametrized: a chain workload under SIGKILLs, then checks.

A ``ChainClient`` sends calls 1..N down a chain of immortals to a ``ChainServer``,
through ``relays`` ``ChainRelay`` hops (see ``ambrosia.testing.workloads``), while the
harness SIGKILLs them and starts them again. Every immortal checks what it sees.

The kill schedule (``plan_kills``, seeded)
-----------------------------------------
- Kill points are drawn uniformly over the calls 0..N, so kills land all along the run,
  not only in its first part. A kill at point P fires once each of its victims has
  recorded P calls (the client: sent; a relay or the server: received), so the
  process that matters is the one whose progress gates it.
- Some kills go by time instead (``time_kills_share``): a short random while after
  the victim became primary, where recovery's follow-ups run (reconnection, resends,
  the first checkpoint).
- Most kills take one victim; some (``several_victims_share``) take two or more at once.
- A victim is only killed again once its restarted process finished recovery (printed
  "primary"), so every kill interrupts a working primary; a kill during a lease wait
  would test nothing.
- Aimed double kills (``checkpoint_double_kills``, each counted as two kills) are the
  exception that aims inside recovery on purpose: a relay or the server is killed the
  moment its output shows "checkpoint N written" (often before any page reached chunk
  N, so checkpoint N resumes in a chunk that is no longer the newest one the log will
  have), restarted, and killed again right after it takes the lease, or right after it
  becomes primary, before its first checkpoint. That is the pair of kills that once
  left a log its own recovery refused.

What is checked
---------------
- Exit codes, before every restart and in every wait: the harness runs with
  ``strict_exits``, so a process that ended by itself (anything but our SIGKILL, or
  our clean stop) stops the run at once with its code and the tail of its log.
- While a victim is down, its log is audited (``ambrosia.testing.log_audit``: the audit
  every start runs, plus pages stable across audits); at the end every log is audited
  again with retention, and the epochs of every page checked against the epochs the
  starts took (one epoch per writer life, never down, each life contiguous).
- The outcome: each relay and the server saw exactly 1..N in order (hash chain) and got
  back every awaited result right; the client got every awaited result exactly once;
  every process stops cleanly (exit 0); replaying each log offline from its checkpoint
  rebuilds the same state.
- Every process log of the run holds no traceback and no CRITICAL line.

Findings are collected as violations (sentences); ``run_crash_scenario`` fails with all
of them, ``run_chain_scenario`` returns them (the soak reports them).

The parameters exist for the backends: a cloud store's lease outlives a SIGKILLed holder
(the restarted process waits for it to expire), so a run there affords fewer kills, and a
fault-injection run gives each process start its own environment (its fault seed).
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ambrosia.testing.harness import Deployment, ProcessFailed
from ambrosia.testing.log_audit import LogWitness, audit_log
from ambrosia.testing.replay import replay
from ambrosia.testing.workloads import (
    ChainClient,
    ChainRelay,
    ChainServer,
    chain_names,
    expected_chain,
    is_async_call,
)

__all__ = [
    "ALLOWED_LOG_LINES",
    "CrashOutcome",
    "CrashSettings",
    "PlannedKill",
    "plan_kills",
    "run_chain_scenario",
    "run_crash_scenario",
]

StartEnvironment = Callable[[str, int], dict[str, str]]

# Traceback or CRITICAL lines a crash run may print. None: a SIGKILL leaves no trace in
# the victim's log, its peers see a closed connection (logged below CRITICAL) and
# reconnect, and a clean stop is quiet. Add a substring here only with the reason.
ALLOWED_LOG_LINES: tuple[str, ...] = ()

_APPS = {
    "client": "ambrosia.testing.workloads:ChainClient",
    "relay": "ambrosia.testing.workloads:ChainRelay",
    "server": "ambrosia.testing.workloads:ChainServer",
}


@dataclass(frozen=True, slots=True)
class CrashSettings:
    total_calls: int = 4000
    kills: int = 12
    relays: int = 0  # ChainRelay hops between client and server
    time_kills_share: float = 0.25
    time_kill_after_primary_s: tuple[float, float] = (0.0, 0.5)
    several_victims_share: float = 0.2
    restart_delay_s: tuple[float, float] = (0.0, 0.3)  # between a kill and the restart
    run_args: tuple[str, ...] = ("--checkpoint-log-bytes", "65536")
    # Liveness limits only: generous, they catch a hung run, they measure nothing.
    kills_timeout_s: float = 240.0
    finish_timeout_s: float = 120.0
    checkpoints_kept: int = 2  # what the processes run with (``--checkpoints-kept``)
    check_retention: bool = True
    # Aimed double kills (module docstring), each counted as two kills.
    checkpoint_double_kills: int = 0
    audit_between_kills: bool = True


@dataclass(frozen=True, slots=True)
class PlannedKill:
    """One step of the schedule: kill ``victims`` once each reached ``at_call`` calls
    (None: at once), ``after_primary_s`` after each finished recovery. ``aimed``: a
    double kill, the second during recovery at this marker."""

    victims: tuple[str, ...]
    at_call: int | None
    after_primary_s: float = 0.0
    aimed: str | None = None

    @property
    def counts_as(self) -> int:
        return 2 if self.aimed else 1


@dataclass(slots=True)
class CrashOutcome:
    deployment: Deployment
    plan: list[PlannedKill]
    kills: int = 0
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    calls_checked: int = 0
    recoveries: int = 0
    audits: int = 0
    audit_seconds: float = 0.0
    pages_witnessed: int = 0
    seconds: float = 0.0

    def report(self) -> str:
        lines = [
            f"kills {self.kills}, calls checked {self.calls_checked}, recoveries "
            f"{self.recoveries}, log audits {self.audits} ({self.pages_witnessed} pages, "
            f"{self.audit_seconds:.1f} s), "
            f"violations {len(self.violations)}, {self.seconds:.0f} s",
            *(f"VIOLATION: {violation}" for violation in self.violations),
        ]
        return "\n".join(lines)


ProgressCallback = Callable[[CrashOutcome], None]

_CHECKPOINT_WRITTEN = re.compile(r": checkpoint \d+ written")
_DURING_RECOVERY = (": lease taken, epoch ", ": primary (replayed ")
_LEASE_TAKEN = re.compile(r": (\S+): lease taken, epoch (\d+)")
_AIM_POLL_S = 0.001  # an aimed kill must land at once
_PROGRESS_POLL_S = 0.01


def plan_kills(rng: random.Random, settings: CrashSettings, names: list[str]) -> list[PlannedKill]:
    """The seeded kill schedule (module docstring)."""
    plain = settings.kills - 2 * settings.checkpoint_double_kills
    points = sorted(rng.randrange(settings.total_calls) for _ in range(plain))
    plan = []
    for point in points:
        if rng.random() < settings.several_victims_share:
            victims = tuple(rng.sample(names, rng.randint(2, len(names))))
        else:
            victims = (rng.choice(names),)
        if rng.random() < settings.time_kills_share:
            plan.append(
                PlannedKill(victims, None, rng.uniform(*settings.time_kill_after_primary_s))
            )
        else:
            plan.append(PlannedKill(victims, point))
    # Aimed kills wait for a checkpoint after their point: kept out of the last fifth of
    # the run, where the log may not grow enough for another one.
    for index in range(settings.checkpoint_double_kills):
        point = rng.randrange(settings.total_calls * 4 // 5)
        victim = rng.choice(names[1:])
        marker = _DURING_RECOVERY[index % len(_DURING_RECOVERY)]
        position = sum(1 for kill in plan if kill.at_call is not None and kill.at_call <= point)
        plan.insert(position, PlannedKill((victim,), point, aimed=marker))
    return plan


class _Run:
    """The kill loop and its bookkeeping: one run of the scenario."""

    def __init__(
        self,
        deployment: Deployment,
        settings: CrashSettings,
        rng: random.Random,
        start_env: StartEnvironment | None,
        outcome: CrashOutcome,
        on_progress: ProgressCallback | None,
    ) -> None:
        self.deployment = deployment
        self.settings = settings
        self.rng = rng
        self.start_env = start_env
        self.outcome = outcome
        self.on_progress = on_progress
        self.witnesses = {name: LogWitness(name) for name in deployment.apps}
        self.deadline = time.monotonic() + settings.kills_timeout_s

    def start(self, name: str) -> None:
        starts = self.deployment.starts.get(name, 0) + 1
        extra = self.start_env(name, starts) if self.start_env else None
        self.deployment.start(name, env=extra)

    def progress(self, name: str) -> int:
        status = self.deployment.status(name)
        if status is None:
            return 0
        return int(status["sent"] if name == "client" else status["count"])

    def recovered(self, name: str) -> bool:
        return f"{name}: primary (" in self.deployment.output(name)

    def wait(self, condition: Callable[[], bool], what: str, poll_s: float) -> None:
        """Wait for ``condition``, checking every exit code each round (strict)."""
        while True:
            self.deployment.check_exits()
            if condition():
                return
            if time.monotonic() >= self.deadline:
                raise TimeoutError(
                    f"the kill schedule ran past its {self.settings.kills_timeout_s} s "
                    f"liveness limit waiting for {what}"
                )
            time.sleep(poll_s)

    def kill_and_restart(self, victims: tuple[str, ...]) -> None:
        for victim in victims:
            self.deployment.kill(victim)
        self.outcome.kills += 1
        if self.settings.audit_between_kills:
            for victim in victims:
                self.audit(victim)
        time.sleep(self.rng.uniform(*self.settings.restart_delay_s))
        for victim in victims:
            self.start(victim)

    def audit(self, name: str, *, checkpoints_kept: int | None = None) -> None:
        # The audit's own time is the harness's, not the system's: the liveness deadline
        # moves by it (a log of a thousand pages on a cloud emulator takes seconds to read,
        # and audits between kills could use up the limit of a healthy run).
        started = time.monotonic()
        found = asyncio.run(
            audit_log(
                self.deployment.log_url,
                name,
                self.witnesses[name],
                checkpoints_kept=checkpoints_kept,
            )
        )
        self.outcome.audits += 1
        self.outcome.violations += found
        spent = time.monotonic() - started
        self.outcome.audit_seconds += spent
        self.deadline += spent

    def execute(self, planned: PlannedKill) -> None:
        victims = planned.victims
        for victim in victims:
            recovered = functools.partial(self.recovered, victim)
            self.wait(recovered, f"{victim} to finish recovery", _PROGRESS_POLL_S)
        at_call = planned.at_call
        if at_call is not None:
            self.wait(
                lambda: min(self.progress(victim) for victim in victims) >= at_call,
                f"{'+'.join(victims)} to reach call {at_call}",
                _PROGRESS_POLL_S,
            )
        time.sleep(planned.after_primary_s)
        if planned.aimed is None:
            self.kill_and_restart(victims)
        else:
            self.double_kill(victims[0], planned.aimed)

    def double_kill(self, victim: str, marker: str) -> None:
        """Kill right after "checkpoint N written", then again during the recovery."""
        written = len(_CHECKPOINT_WRITTEN.findall(self.deployment.output(victim)))
        self.wait(
            lambda: len(_CHECKPOINT_WRITTEN.findall(self.deployment.output(victim))) > written,
            f"a checkpoint of {victim} to kill after",
            _AIM_POLL_S,
        )
        self.kill_and_restart((victim,))
        self.wait(lambda: marker in self.deployment.output(victim), marker, _AIM_POLL_S)
        self.kill_and_restart((victim,))

    def run_kills(self, plan: list[PlannedKill]) -> None:
        for planned in plan:
            self.execute(planned)
            if self.on_progress is not None:
                self.outcome.recoveries = _recoveries(self.deployment)
                self.on_progress(self.outcome)

    def finish(self, names: list[str]) -> None:
        total = self.settings.total_calls

        def finished() -> bool:
            statuses = {name: self.deployment.status(name) for name in names}
            if any(status is None for status in statuses.values()):
                return False
            client = statuses["client"]
            assert client is not None
            return bool(client["done"]) and all(
                status is not None and status["count"] >= total
                for name, status in statuses.items()
                if name != "client"
            )

        # Every process up again first: a status file outlives its writer, so a process
        # killed late could look finished while its restart is still starting (and a
        # SIGTERM then would find no handler installed yet).
        self.deployment.wait_for(
            lambda: all(self.recovered(name) for name in names),
            self.settings.finish_timeout_s,
            "every process to finish its last recovery",
        )
        self.deployment.wait_for(
            finished,
            self.settings.finish_timeout_s,
            "the client to finish and every hop to see every call",
        )
        for name in names:
            status = self.deployment.status(name)
            assert status is not None
            self.outcome.statuses[name] = status
        for name in names:
            code = self.deployment.terminate(name)
            if code != 0:
                self.outcome.violations.append(
                    f"{name} exited with {code} after a clean stop: "
                    f"{self.deployment.output(name)[-3000:]}"
                )


def _recoveries(deployment: Deployment) -> int:
    """Restarts that finished recovery (a later run of a label that printed "primary")."""
    return sum(
        f"{label}: primary (" in deployment.output(label, run)
        for label, starts in deployment.starts.items()
        for run in range(2, starts + 1)
    )


def _life_epochs(deployment: Deployment, name: str) -> list[int]:
    epochs = []
    for run in range(1, deployment.starts.get(name, 0) + 1):
        for instance, epoch in _LEASE_TAKEN.findall(deployment.output(name, run)):
            if instance == name:
                epochs.append(int(epoch))
    return epochs


def _check_outcome(outcome: CrashOutcome, settings: CrashSettings, names: list[str]) -> None:
    """Each hop saw 1..N in order; the client got every awaited result exactly once."""
    total = settings.total_calls
    violations = outcome.violations
    chain = expected_chain(range(1, total + 1))
    awaited = [n for n in range(1, total + 1) if is_async_call(n)]
    for name in names[1:]:
        status = outcome.statuses[name]
        if status["out_of_order"] or status["count"] != total or status["chain"] != chain:
            violations.append(
                f"{name} did not see calls 1..{total} exactly once in order: count "
                f"{status['count']}, first out of order {status['out_of_order']}, chain "
                f"{'matches' if status['chain'] == chain else 'differs'}"
            )
        if status.get("bad_results"):
            violations.append(f"{name} got wrong results for calls {status['bad_results']}")
        outcome.calls_checked += int(status["count"])
    client = outcome.statuses["client"]
    if (
        client["bad_results"]
        or client["results"] != len(awaited)
        or client["result_chain"] != expected_chain(awaited)
    ):
        violations.append(
            f"client did not get each of the {len(awaited)} awaited results exactly once: "
            f"{client['results']} results, wrong ones {client['bad_results']}"
        )
    outcome.calls_checked += int(client["results"])


def _check_replay(outcome: CrashOutcome, log_url: str, names: list[str]) -> None:
    """Replaying each log offline from its checkpoint rebuilds the state the run ended in."""
    for name in names:
        status = outcome.statuses[name]
        cls = ChainClient if name == "client" else ChainServer if name == "server" else ChainRelay
        state = asyncio.run(replay(log_url, name, cls))
        if isinstance(state, ChainClient):
            same = (state.done, state.results, state.result_chain) == (
                True,
                status["results"],
                status["result_chain"],
            )
        else:
            assert isinstance(state, ChainServer)
            same = (state.count, state.chain) == (status["count"], status["chain"])
        if not same:
            outcome.violations.append(f"{name}: replaying its log gives another state")


def run_chain_scenario(
    directory: Path,
    log_url: str | None,
    seed: int,
    *,
    settings: CrashSettings | None = None,
    env: dict[str, str] | None = None,
    start_env: StartEnvironment | None = None,
    on_progress: ProgressCallback | None = None,
) -> CrashOutcome:
    """Run the scenario; its outcome with every violation found (module docstring).

    ``start_env(name, start_number)`` gives extra environment for one process start;
    ``on_progress`` is called after each step of the kill schedule.
    """
    settings = settings or CrashSettings()
    began = time.monotonic()
    rng = random.Random(seed)
    names = chain_names(settings.relays)
    deployment = Deployment(
        directory,
        log_url=log_url,
        env={
            "AMBROSIA_CHAIN_TOTAL": str(settings.total_calls),
            "AMBROSIA_CHAIN_RELAYS": str(settings.relays),
            **(env or {}),
        },
        run_args=settings.run_args,
        strict_exits=True,
    )
    for name in names:
        deployment.register(name, _APPS[name.split("-")[0]])
    plan = plan_kills(rng, settings, names)
    outcome = CrashOutcome(deployment, plan)
    run = _Run(deployment, settings, rng, start_env, outcome, on_progress)
    finished = False
    try:
        for name in reversed(names):
            run.start(name)
        run.run_kills(plan)
        run.finish(names)
        finished = True
    except (ProcessFailed, TimeoutError) as error:
        outcome.violations.append(f"the run stopped: {error}")
    finally:
        deployment.stop_all()

    for name in names:
        run.audit(
            name, checkpoints_kept=settings.checkpoints_kept if settings.check_retention else None
        )
        outcome.violations += run.witnesses[name].check_epochs(_life_epochs(deployment, name))
    outcome.pages_witnessed = sum(len(witness.pages) for witness in run.witnesses.values())
    outcome.violations += [
        f"process log: {finding}" for finding in deployment.log_findings(ALLOWED_LOG_LINES)
    ]
    outcome.recoveries = _recoveries(deployment)
    if finished:
        _check_outcome(outcome, settings, names)
        _check_replay(outcome, deployment.log_url, names)
    outcome.seconds = time.monotonic() - began
    return outcome


def run_crash_scenario(
    directory: Path,
    log_url: str | None,
    seed: int,
    *,
    settings: CrashSettings | None = None,
    env: dict[str, str] | None = None,
    start_env: StartEnvironment | None = None,
) -> CrashOutcome:
    """Run the scenario; AssertionError with every violation when exactly-once is broken."""
    outcome = run_chain_scenario(
        directory, log_url, seed, settings=settings, env=env, start_env=start_env
    )
    assert not outcome.violations, outcome.report()
    expected = sum(planned.counts_as for planned in outcome.plan)
    assert outcome.kills == expected, f"{outcome.kills} of {expected} planned kills"
    return outcome
