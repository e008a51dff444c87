"""The pause a live upgrade costs under load: ``python -m ambrosia.testing.upgrade_pause``.

Runs the chain workload (``ambrosia.testing.workloads``: a client calling a server one
call after another, a third of them awaited) with real processes on the file backend,
and upgrades the server ``--upgrades`` times while the load runs (version 1 to 2, 2 to
3, ..., the code alternating between ``ChainServer`` and ``ChainServerNext``). For each
upgrade it reports:

- hand-over: from the old primary's "hand over" line (it stops taking input) to the
  upgrader's "role primary" line (it serves), both from the processes' logs;
- new code: from the same step-down line to the upgrader's "upgraded to version" line
  (the new code's checkpoint durable, the catalog updated: it serves the next page);
- stall: the longest time the server's call count did not move around the upgrade, as
  seen in its status file (written every 50 ms: the resolution of this figure).

``--instance client`` upgrades the client instead: it awaits every third call, so the
new primary usually finds a handler awaiting one when it takes over and serves the old
code until a page boundary where none awaits (``ambrosia.upgrade``); "new code" then
includes that wait.

At the end every call is checked to have arrived once and in order.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ambrosia.testing.harness import Deployment
from ambrosia.testing.workloads import (
    ChainClient,
    ChainServer,
    expected_chain,
)

CLASSES = {
    "server": (
        "ambrosia.testing.workloads:ChainServer",
        "ambrosia.testing.upgrade_pause:ChainServerNext",
    ),
    "client": (
        "ambrosia.testing.workloads:ChainClient",
        "ambrosia.testing.upgrade_pause:ChainClientNext",
    ),
}
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
LIVENESS_S = 120.0


class ChainServerNext(ChainServer):
    """The chain server, another version: its status names it (the default migration)."""

    def _status(self) -> dict[str, object]:
        return {**super()._status(), "class": "next"}


class ChainClientNext(ChainClient):
    """The chain client, another version (the default migration)."""


def _stamp(output: str, marker: str) -> float:
    for line in output.splitlines():
        found = _STAMP.match(line)
        if found and marker in line:
            moment = datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f")
            return moment.timestamp()
    raise AssertionError(f"no line with {marker!r} in:\n{output[-3000:]}")


def _count(deployment: Deployment) -> int:
    status = deployment.status("server")
    return int(status["count"]) if status else 0


def measure(
    directory: Path, upgrades: int, calls: int, instance: str = "server"
) -> list[tuple[float, float, float]]:
    """(hand-over s, new code s, stall s) of each upgrade; fails when a call was lost or
    repeated."""
    deployment = Deployment(
        directory,
        env={"AMBROSIA_CHAIN_TOTAL": str(calls)},
        run_args=("--checkpoint-log-bytes", "65536", "--version-check-s", "0.1"),
        strict_exits=True,
    )
    other = "client" if instance == "server" else "server"
    classes = CLASSES[instance]
    deployment.register(instance, classes[0], args=("--version", "1"))
    deployment.register(other, CLASSES[other][0])
    results: list[tuple[float, float, float]] = []
    labels = ["v1"]
    try:
        deployment.start("server", label="v1" if instance == "server" else None)
        server_label = "v1" if instance == "server" else "server"
        deployment.wait_for(
            lambda: "role primary" in deployment.output(server_label), 60, "primary"
        )
        deployment.start("client", label="v1" if instance == "client" else None)
        for number in range(1, upgrades + 1):
            at = _count(deployment)
            deployment.wait_for(
                lambda at=at: _count(deployment) > at + 300,  # type: ignore[misc]
                60,
                "load",
                ignore=tuple(labels[:-1]),
            )
            old, new = labels[-1], f"v{number + 1}"
            labels.append(new)
            deployment.start(
                instance,
                label=new,
                subcommand="upgrade",
                args=("--app", classes[number % 2], "--version", str(number + 1)),
            )
            changes: list[float] = []
            last = -1
            deadline = time.monotonic() + LIVENESS_S
            while "upgraded to version" not in deployment.output(new) or (
                deployment.processes[old].poll() is None
            ):
                deployment.check_exits(ignore=tuple(labels[:-1]))
                count = _count(deployment)
                if count != last:
                    changes.append(time.monotonic())
                    last = count
                if time.monotonic() > deadline:
                    raise TimeoutError(f"upgrade to version {number + 1} did not finish")
                time.sleep(0.002)
            settle = time.monotonic() + 0.3
            while time.monotonic() < settle:
                count = _count(deployment)
                if count != last:
                    changes.append(time.monotonic())
                    last = count
                time.sleep(0.002)
            stall = max((b - a for a, b in itertools.pairwise(changes)), default=0.0)
            asked = _stamp(deployment.output(old), "asks this primary")
            handover = _stamp(deployment.output(new), "role primary (took over") - asked
            upgraded = _stamp(deployment.output(new), "upgraded to version") - asked
            if deployment.processes[old].returncode != 0:
                raise AssertionError(f"{old} exited with {deployment.processes[old].returncode}")
            results.append((handover, upgraded, stall))
            print(
                f"upgrade to version {number + 1}: hand-over {handover * 1000:.0f} ms, "
                f"new code serving after {upgraded * 1000:.0f} ms, longest stall of the "
                f"load {stall * 1000:.0f} ms",
                flush=True,
            )

        def done() -> bool:
            client = deployment.status("client")
            return bool(client and client["done"]) and _count(deployment) >= calls

        deployment.wait_for(done, LIVENESS_S * 4, "every call", ignore=tuple(labels[:-1]))
        server = deployment.status("server")
        assert server is not None
        if server["chain"] != expected_chain(range(1, calls + 1)) or server["out_of_order"]:
            raise AssertionError(f"calls lost, repeated or out of order: {server}")
        return results
    finally:
        deployment.stop_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upgrades", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--dir", type=Path, help="where the logs go (default: a temporary one)")
    parser.add_argument(
        "--instance",
        choices=("server", "client"),
        default="server",
        help="the instance upgraded: the server (handles calls), or the client (awaits "
        "every third call, so it is mid-call at most hand-overs)",
    )
    args = parser.parse_args(argv)
    if args.dir is not None:
        results = measure(args.dir, args.upgrades, args.calls, args.instance)
    else:
        with tempfile.TemporaryDirectory() as directory:
            results = measure(Path(directory), args.upgrades, args.calls, args.instance)
    handovers = [h * 1000 for h, _, _ in results]
    upgraded = [u * 1000 for _, u, _ in results]
    stalls = [s * 1000 for _, _, s in results]
    print(
        f"{len(results)} upgrades, every one of {args.calls} calls once and in order; "
        f"hand-over ms median {statistics.median(handovers):.0f} max {max(handovers):.0f}; "
        f"new code serving ms median {statistics.median(upgraded):.0f} "
        f"max {max(upgraded):.0f}; "
        f"longest stall ms median {statistics.median(stalls):.0f} max {max(stalls):.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
