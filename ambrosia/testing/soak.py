"""A soak: the crash scenario at length, across a chain of three or more immortals.

    python -m ambrosia.testing.soak --kills 1000 --immortals 3 [--seed S] [--log URL]

A client sends calls 1..N down a chain (client -> relay-1 -> ... -> server; forks and
awaited calls, each awaited call answered through every hop, each hop checking the
sequence and the results it sees) while the processes are SIGKILLed ``--kills`` times,
at points spread over the whole run (``ambrosia.testing.crash`` documents the schedule
and every check). N defaults to ``--calls-per-kill`` times the kills, so the kills stay
apart by about that many calls.

Prints a progress line every ``--progress-s`` seconds and, at the end, the report:
kills, calls checked, recoveries, log audits, violations with their details. Exits 1 on
any violation. Not run in CI at this size (a short one is: tests/crash/test_soak.py).
The run directory (process logs, catalog, the file log unless ``--log`` names another)
is kept when something failed, or with ``--keep``.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ambrosia.testing.crash import CrashOutcome, CrashSettings, run_chain_scenario

__all__ = ["main", "soak_settings"]

CALLS_PER_KILL_DEFAULT = 150
# Liveness limits per kill, generous: a restart costs an interpreter start and a
# recovery, several seconds on a loaded two-core machine, and a cloud lease wait more.
SECONDS_PER_KILL_MAX = 20.0


def soak_settings(
    *, kills: int, immortals: int, calls_per_kill: int = CALLS_PER_KILL_DEFAULT
) -> CrashSettings:
    if immortals < 3:
        raise SystemExit("--immortals: at least 3 (a client, a relay, a server)")
    return CrashSettings(
        total_calls=max(kills, 1) * calls_per_kill,
        kills=kills,
        relays=immortals - 2,
        # One aimed double kill per hundred kills (a checkpoint, then inside recovery).
        checkpoint_double_kills=kills // 100,
        kills_timeout_s=60.0 + SECONDS_PER_KILL_MAX * kills,
        finish_timeout_s=300.0,
    )


class _Progress:
    def __init__(self, every_s: float, planned: int) -> None:
        self.every_s = every_s
        self.planned = planned
        self.began = time.monotonic()
        self.last = self.began

    def __call__(self, outcome: CrashOutcome) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last = now
        status = outcome.deployment.status("client")
        sent = 0 if status is None else status["sent"]
        total = 0 if status is None else status["total"]
        print(
            f"[{now - self.began:6.0f} s] kills {outcome.kills}/{self.planned}, client at call "
            f"{sent}/{total}, recoveries {outcome.recoveries}, log audits {outcome.audits}, "
            f"violations so far {len(outcome.violations)}",
            flush=True,
        )


def _interrupt(signal_number: int, frame: object) -> None:
    # A SIGTERM unwinds like Ctrl-C, so the scenario SIGKILLs the processes it started
    # instead of leaving them running.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(
        prog="python -m ambrosia.testing.soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--immortals", type=int, default=3, help="chain length, at least 3")
    parser.add_argument("--seed", type=int, default=None, help="default: from the clock")
    parser.add_argument("--log", default=None, help="log URL (default: a file log in the run)")
    parser.add_argument("--calls-per-kill", type=int, default=CALLS_PER_KILL_DEFAULT)
    parser.add_argument("--directory", type=Path, default=None, help="run directory")
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    parser.add_argument("--progress-s", type=float, default=10.0)
    args = parser.parse_args(argv)
    settings = soak_settings(
        kills=args.kills, immortals=args.immortals, calls_per_kill=args.calls_per_kill
    )
    seed = args.seed if args.seed is not None else time.time_ns() % 1_000_000_007
    directory = args.directory or Path(tempfile.mkdtemp(prefix="ambrosia-soak-"))
    print(
        f"soak: seed {seed}, {args.immortals} immortals, {settings.kills} kills over "
        f"{settings.total_calls} calls, directory {directory}",
        flush=True,
    )
    outcome = run_chain_scenario(
        directory,
        args.log,
        seed,
        settings=settings,
        on_progress=_Progress(args.progress_s, settings.kills),
    )
    print(outcome.report(), flush=True)
    if outcome.violations or args.keep or args.directory is not None:
        print(f"run directory kept: {directory}")
    else:
        shutil.rmtree(directory, ignore_errors=True)
    return 1 if outcome.violations else 0


if __name__ == "__main__":
    sys.exit(main())
