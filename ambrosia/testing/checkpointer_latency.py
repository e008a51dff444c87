"""The primary's call latency with and without a checkpointer standby, under load:
``python -m ambrosia.testing.checkpointer_latency``.

A server whose state is large (``--entries`` dictionary entries, a few MB serialized: a
checkpoint of its own pauses its calls for as long as serializing that takes) runs as
primary with one hot standby, on the file backend with small chunks, so that a
checkpoint is due every second or two. A client calls it in ``--parallel`` closed loops
(one awaited call after another in each) and times every call from send to result, which
includes the log writes on both sides. Each round runs the same thing twice on fresh
logs: the standby plain (the primary checkpoints itself), then the standby with
``--checkpointer`` (the primary adopts its checkpoints), the order alternating from
round to round so that a drift of the shared machine's load weighs on both alike.
Reported per round and pooled: calls, p50, p99, p99.9 and max latency over the measured
window (after a warm-up), the calls slower than 100 ms, and the checkpoints the primary
took itself and adopted in it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ambrosia.binding.immortal import Immortal, rpc
from ambrosia.testing.harness import Deployment

LIVENESS_S = 120.0
_STAMP = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*server: checkpoint \d+ (written|adopted)"
)
# Latencies the client measured and not yet written out (never part of its state).
_SAMPLES: list[tuple[float, float]] = []


class LatencyServer(Immortal):
    """A counter beside a large dictionary, one entry of which every call changes."""

    def __init__(self) -> None:
        entries = int(os.environ.get("AMBROSIA_LATENCY_ENTRIES", "100000"))
        self.table = {f"entry-{index:08d}": index for index in range(entries)}
        self.count = 0

    @rpc
    def call(self, n: int) -> int:
        self.count += 1
        key = f"entry-{n % len(self.table):08d}"
        self.table[key] += 1
        return n


class LatencyClient(Immortal):
    """Calls the server, one awaited call after another, timing each (``_SAMPLES``)."""

    def __init__(self) -> None:
        self.sent = 0

    async def on_first_start(self) -> None:
        # ``AMBROSIA_LATENCY_PARALLEL`` chains of calls, each one call after another.
        for chain in range(int(os.environ.get("AMBROSIA_LATENCY_PARALLEL", "1"))):
            self.this.step.fork(chain * 1_000_000_000 + 1)

    @rpc
    async def step(self, n: int) -> None:
        self.sent = n
        started = time.perf_counter()
        await self.proxy(LatencyServer, "server").call(n)
        _SAMPLES.append((time.time(), time.perf_counter() - started))
        self.this.step.fork(n + 1)

    async def on_become_primary(self) -> None:
        self.start_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        import asyncio

        path = Path(os.environ["AMBROSIA_STATUS_DIR"]) / "latency.txt"
        while True:
            await asyncio.sleep(0.25)
            samples = _SAMPLES[:]
            del _SAMPLES[: len(samples)]
            with path.open("a") as out:
                out.writelines(f"{at:.6f} {latency:.6f}\n" for at, latency in samples)


def _checkpoints(output: str, start: float, end: float) -> tuple[int, int]:
    """(taken itself, adopted) by the server between wall times ``start`` and ``end``."""
    own = adopted = 0
    for line in output.splitlines():
        match = _STAMP.match(line)
        if match is None:
            continue
        stamp = time.mktime(time.strptime(match.group(1)[:19], "%Y-%m-%d %H:%M:%S"))
        stamp += int(match.group(1)[20:]) / 1000
        if start <= stamp <= end:
            if match.group(2) == "written":
                own += 1
            else:
                adopted += 1
    return own, adopted


def _pin(pid: int, cpus: list[int]) -> None:
    """Every thread of process ``pid`` (threads started later inherit it) onto ``cpus``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def run_once(
    directory: Path,
    *,
    checkpointer: bool,
    parallel: int,
    entries: int,
    warmup_s: float,
    measure_s: float,
    chunk_bytes: int,
    pin: bool = False,
) -> dict[str, object]:
    """One run; ``pin``: the standby on the last CPU, the primary and the client on the
    others (as if the standby ran on a machine of its own; it needs 2 CPUs or more)."""
    deployment = Deployment(
        directory,
        env={"AMBROSIA_LATENCY_ENTRIES": str(entries), "AMBROSIA_LATENCY_PARALLEL": str(parallel)},
        run_args=("--checkpoint-log-bytes", str(chunk_bytes)),
        strict_exits=True,
    )
    deployment.register("server", "ambrosia.testing.checkpointer_latency:LatencyServer")
    deployment.register("client", "ambrosia.testing.checkpointer_latency:LatencyClient")
    try:
        deployment.start("server", label="primary")
        deployment.wait_for(
            lambda: "role primary" in deployment.output("primary"), LIVENESS_S, "primary"
        )
        standby_args = ("--role", "standby", *(("--checkpointer",) if checkpointer else ()))
        deployment.start("server", label="standby", args=standby_args)
        cpus = sorted(os.sched_getaffinity(0))
        if pin and len(cpus) >= 2:
            _pin(deployment.processes["primary"].pid, cpus[:-1])
            _pin(deployment.processes["standby"].pid, cpus[-1:])
        deployment.wait_for(
            lambda: "role standby" in deployment.output("standby"), LIVENESS_S, "standby"
        )
        # The client checkpoints only at its start: its own pauses are not measured.
        deployment.start("client", args=("--checkpoint-log-bytes", str(1 << 30)))
        if pin and len(cpus) >= 2:
            _pin(deployment.processes["client"].pid, cpus[:-1])
        samples_path = deployment.status_dir / "latency.txt"
        deployment.wait_for(samples_path.exists, LIVENESS_S, "the first calls")
        start = time.time() + warmup_s
        end = start + measure_s
        while time.time() < end + 0.5:
            deployment.check_exits()
            time.sleep(0.1)
        output = deployment.output("primary")
    finally:
        deployment.stop_all()
    latencies = []
    for line in samples_path.read_text().splitlines():
        at, latency = (float(field) for field in line.split())
        if start <= at <= end:
            latencies.append(latency * 1000)
    latencies.sort()
    own, adopted = _checkpoints(output, start, end)

    def rank(fraction: float) -> float:
        return latencies[min(len(latencies) - 1, int(fraction * len(latencies)))]

    return {
        "checkpointer": checkpointer,
        "calls": len(latencies),
        "p50_ms": round(rank(0.50), 3),
        "p99_ms": round(rank(0.99), 3),
        "p999_ms": round(rank(0.999), 3),
        "over_100ms": sum(1 for value in latencies if value > 100),
        "max_ms": round(latencies[-1], 3),
        "mean_ms": round(statistics.fmean(latencies), 3),
        "own_checkpoints": own,
        "adopted_checkpoints": adopted,
        "latencies_ms": latencies,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--measure-s", type=float, default=15.0)
    parser.add_argument("--chunk-bytes", type=int, default=16384)
    parser.add_argument("--parallel", type=int, default=4, help="calls in flight")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the standby on the last CPU, the primary and the client on the others",
    )
    parser.add_argument("--json", type=Path, help="write every round's figures here")
    options = parser.parse_args(argv)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="checkpointer-latency-") as scratch:
        for number in range(options.rounds):
            order = (False, True) if number % 2 == 0 else (True, False)
            for checkpointer in order:
                row = run_once(
                    Path(scratch) / f"round-{number}-{int(checkpointer)}",
                    checkpointer=checkpointer,
                    parallel=options.parallel,
                    entries=options.entries,
                    warmup_s=options.warmup_s,
                    measure_s=options.measure_s,
                    chunk_bytes=options.chunk_bytes,
                    pin=options.pin,
                )
                row["round"] = number + 1
                row["load_average"] = os.getloadavg()[0]
                rows.append(row)
                print(
                    f"round {number + 1} {'with' if checkpointer else 'without'} checkpointer: "
                    f"{row['calls']} calls, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
                    f"p99.9 {row['p999_ms']} ms, max {row['max_ms']} ms, "
                    f"{row['over_100ms']} over 100 ms; checkpoints own {row['own_checkpoints']}, "
                    f"adopted {row['adopted_checkpoints']}; load {row['load_average']:.2f}",
                    flush=True,
                )
    print(
        "\n| checkpointer | calls | p50 ms | p99 ms | p99.9 ms | max ms | calls > 100 ms "
        "| own ckpts | adopted |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for checkpointer in (False, True):
        chosen = [row for row in rows if row["checkpointer"] is checkpointer]
        pooled = sorted(
            value
            for row in chosen
            for value in row["latencies_ms"]  # type: ignore[attr-defined]
        )

        def rank(fraction: float, pooled: list[float] = pooled) -> float:
            return pooled[min(len(pooled) - 1, int(fraction * len(pooled)))]

        own = sum(int(row["own_checkpoints"]) for row in chosen)  # type: ignore[call-overload]
        adopted = sum(int(row["adopted_checkpoints"]) for row in chosen)  # type: ignore[call-overload]
        print(
            f"| {'with' if checkpointer else 'without'} | {len(pooled)} | {rank(0.5):.2f} | "
            f"{rank(0.99):.2f} | {rank(0.999):.2f} | {pooled[-1]:.2f} | "
            f"{sum(1 for value in pooled if value > 100)} | {own} | {adopted} |"
        )
    if options.json is not None:
        options.json.write_text(
            json.dumps([{k: v for k, v in row.items() if k != "latencies_ms"} for row in rows])
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
