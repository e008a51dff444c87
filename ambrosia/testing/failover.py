"""The crash scenario with hot standbys: SIGKILL whichever process is primary.

The chain workload of ``ambrosia.testing.crash`` (a ``ChainClient`` sending calls 1..N
to a ``ChainServer``, through ``relays`` ``ChainRelay`` hops), with every server and
relay instance run by ``replicas`` processes at once (``ambrosia run NAME``, role auto:
one primary, the others hot standbys). Labels are ``NAME#1``, ``NAME#2``, ...

The kill schedule (seeded): each kill waits until the instance made progress since the
previous one (``calls_between_kills``) and until it has a standby that finished loading
(so the kill tests a takeover, not a cold start), then SIGKILLs the instance's current
primary and, with probability ``standby_kill_share``, one of its standbys too. Killed
processes start again after a short delay and come back as standbys. The time from
each primary's kill to the line "role primary" of its successor is recorded.

What is checked is what the crash scenario checks: exit codes in every wait (strict),
each hop saw 1..N exactly once in order, the client got every awaited result exactly
once, a replay of each log rebuilds the final state, no traceback or CRITICAL line in
any process log. Plus the split-brain audit: every page of every log was written under
an epoch some process took, epochs never go down along the log, each life's pages are
contiguous (``LogWitness.check_epochs``), so no page was written by a primary after a
later one took over.
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

from ambrosia.testing.crash import (
    ALLOWED_LOG_LINES,
    CrashOutcome,
    CrashSettings,
    _check_outcome,
    _check_replay,
)
from ambrosia.testing.harness import Deployment, ProcessFailed
from ambrosia.testing.log_audit import LogWitness, audit_log
from ambrosia.testing.workloads import chain_names

__all__ = ["FailoverOutcome", "FailoverSettings", "run_failover_scenario"]

_APPS = {
    "client": "ambrosia.testing.workloads:ChainClient",
    "relay": "ambrosia.testing.workloads:ChainRelay",
    "server": "ambrosia.testing.workloads:ChainServer",
}
_ROLE = re.compile(r": role (primary|standby) ")
_LEASE_TAKEN = re.compile(r": (\S+): lease taken, epoch (\d+)")
_POLL_S = 0.01


@dataclass(frozen=True, slots=True)
class FailoverSettings:
    total_calls: int = 2000
    kills: int = 6  # primaries killed
    replicas: int = 3  # processes per server or relay instance: a primary, 2 standbys
    relays: int = 0
    standby_kill_share: float = 0.3
    restart_delay_s: tuple[float, float] = (0.0, 0.3)
    run_args: tuple[str, ...] = ("--checkpoint-log-bytes", "65536")
    # Liveness limits only.
    kills_timeout_s: float = 300.0
    takeover_timeout_s: float = 60.0
    finish_timeout_s: float = 120.0

    @property
    def calls_between_kills(self) -> int:
        return max(1, self.total_calls // (self.kills + 2))


@dataclass(slots=True)
class FailoverOutcome:
    crash: CrashOutcome
    takeovers_s: list[float] = field(default_factory=list)
    standby_kills: int = 0

    @property
    def violations(self) -> list[str]:
        return self.crash.violations

    def report(self) -> str:
        times = sorted(self.takeovers_s)
        median = times[len(times) // 2] if times else float("nan")
        return (
            f"{self.crash.report()}\nprimary kills {len(times)}, standby kills "
            f"{self.standby_kills}, kill -> new primary: median {median:.3f} s, max "
            f"{max(times, default=float('nan')):.3f} s"
        )


class _Failover:
    def __init__(self, deployment: Deployment, settings: FailoverSettings, seed: int) -> None:
        self.deployment = deployment
        self.settings = settings
        self.rng = random.Random(seed)
        self.deadline = time.monotonic() + settings.kills_timeout_s

    def labels(self, name: str) -> list[str]:
        return [f"{name}#{index}" for index in range(1, self.settings.replicas + 1)]

    def alive(self, label: str) -> bool:
        process = self.deployment.processes.get(label)
        return process is not None and process.poll() is None

    def role(self, label: str) -> str | None:
        if not self.alive(label):
            return None
        roles = _ROLE.findall(self.deployment.output(label))
        return roles[-1] if roles else None

    def primary(self, name: str) -> str | None:
        primaries = [label for label in self.labels(name) if self.role(label) == "primary"]
        return primaries[-1] if primaries else None

    def started(self, label: str) -> bool:
        return self.role(label) is not None

    def reached(self, name: str, target: int) -> bool:
        return self.progress(name) >= target

    def progress(self, name: str) -> int:
        status = self.deployment.status(name)
        if status is None:
            return 0
        return int(status["sent"] if name == "client" else status["count"])

    def wait(self, condition: Callable[[], bool], what: str, limit_s: float | None = None) -> None:
        deadline = self.deadline if limit_s is None else time.monotonic() + limit_s
        while True:
            self.deployment.check_exits()
            if condition():
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(_POLL_S)

    def kill_primary(self, name: str, outcome: FailoverOutcome) -> None:
        self.wait(lambda: self.primary(name) is not None, f"a primary of {name}")
        self.wait(
            lambda: any(self.role(label) == "standby" for label in self.labels(name)),
            f"a standby of {name}",
        )
        primary = self.primary(name)
        assert primary is not None
        victims = [primary]
        standbys = [label for label in self.labels(name) if self.role(label) == "standby"]
        if len(standbys) > 1 and self.rng.random() < self.settings.standby_kill_share:
            victims.append(self.rng.choice(standbys))
            outcome.standby_kills += 1
        killed_at = time.monotonic()
        for victim in victims:
            self.deployment.kill(victim)
        outcome.crash.kills += 1
        self.wait(
            lambda: self.primary(name) is not None,
            f"a standby of {name} to take over",
            self.settings.takeover_timeout_s,
        )
        outcome.takeovers_s.append(time.monotonic() - killed_at)
        time.sleep(self.rng.uniform(*self.settings.restart_delay_s))
        for victim in victims:
            self.deployment.start(name, label=victim)

    def finish(self, names: list[str], outcome: FailoverOutcome) -> None:
        total = self.settings.total_calls

        def finished() -> bool:
            statuses = {name: self.deployment.status(name) for name in names}
            client = statuses["client"]
            return bool(client and client["done"]) and all(
                status is not None and status["count"] >= total
                for name, status in statuses.items()
                if name != "client"
            )

        self.wait(finished, "every call to be seen", self.settings.finish_timeout_s)
        for name in names:
            status = self.deployment.status(name)
            assert status is not None
            outcome.crash.statuses[name] = status
        self.deployment.check_exits()
        for label, process in list(self.deployment.processes.items()):
            if process.poll() is not None:
                continue  # killed by the schedule (check_exits accepted it)
            code = self.deployment.terminate(label)
            if code != 0:
                outcome.violations.append(
                    f"{label} exited with {code} after a clean stop: "
                    f"{self.deployment.output(label)[-3000:]}"
                )


def _life_epochs(deployment: Deployment, name: str, labels: list[str]) -> list[int]:
    epochs = []
    for label in labels:
        for run in range(1, deployment.starts.get(label, 0) + 1):
            for instance, epoch in _LEASE_TAKEN.findall(deployment.output(label, run)):
                if instance == name:
                    epochs.append(int(epoch))
    return sorted(epochs)


def run_failover_scenario(
    directory: Path,
    log_url: str | None,
    seed: int,
    *,
    settings: FailoverSettings | None = None,
    env: dict[str, str] | None = None,
) -> FailoverOutcome:
    """Run the scenario (module docstring); its outcome with every violation found."""
    settings = settings or FailoverSettings()
    began = time.monotonic()
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
    outcome = FailoverOutcome(CrashOutcome(deployment, []))
    run = _Failover(deployment, settings, seed)
    replicated = [name for name in names if name != "client"]
    finished = False
    try:
        for name in reversed(replicated):
            for label in run.labels(name):
                deployment.start(name, label=label)
                # The first to start is primary; the others find its log and follow it.
                run.wait(functools.partial(run.started, label), f"{label} to start")
        deployment.start("client")
        for kill in range(settings.kills):
            name = run.rng.choice(replicated)
            target = settings.calls_between_kills * (kill + 1)
            run.wait(functools.partial(run.reached, name, target), f"{name} to reach call {target}")
            run.kill_primary(name, outcome)
        run.finish(names, outcome)
        finished = True
    except (ProcessFailed, TimeoutError) as error:
        outcome.violations.append(f"the run stopped: {error}")
    finally:
        deployment.stop_all()
    for name in names:
        witness = LogWitness(name)
        outcome.violations.extend(asyncio.run(audit_log(deployment.log_url, name, witness)))
        labels = run.labels(name) if name in replicated else [name]
        outcome.violations.extend(witness.check_epochs(_life_epochs(deployment, name, labels)))
        outcome.crash.pages_witnessed += len(witness.pages)
        outcome.crash.audits += 1
    outcome.violations.extend(
        f"process log: {finding}" for finding in deployment.log_findings(ALLOWED_LOG_LINES)
    )
    if finished:
        crash_settings = _as_crash_settings(settings)
        _check_outcome(outcome.crash, crash_settings, names)
        _check_replay(outcome.crash, deployment.log_url, names)
    outcome.crash.seconds = time.monotonic() - began
    return outcome


def _as_crash_settings(settings: FailoverSettings) -> CrashSettings:
    return CrashSettings(total_calls=settings.total_calls, relays=settings.relays)


def main(argv: list[str] | None = None) -> int:
    """The long run: ``python -m ambrosia.testing.failover --kills 20 --calls 8000``."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m ambrosia.testing.failover")
    parser.add_argument("--log", help="log URL (default: a file log in the run directory)")
    parser.add_argument("--calls", type=int, default=8000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--relays", type=int, default=1)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--directory", help="run directory (default: a temporary one)")
    args = parser.parse_args(argv)
    settings = FailoverSettings(
        total_calls=args.calls,
        kills=args.kills,
        relays=args.relays,
        replicas=args.replicas,
        kills_timeout_s=60.0 * args.kills,
        finish_timeout_s=600.0,
    )
    directory = Path(args.directory or tempfile.mkdtemp(prefix="failover-"))
    outcome = run_failover_scenario(directory, args.log, args.seed, settings=settings)
    print(outcome.report())
    print(f"run directory: {directory}")
    return 1 if outcome.violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
