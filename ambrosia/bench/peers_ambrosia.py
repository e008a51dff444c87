"""The ambrosia row of ``ambrosia-bench peers``: a counter immortal and a driver immortal.

Two processes with their own embedded local-file logs, started as ``ambrosia-bench
throughput`` starts its pair (``ambrosia.bench.ambrosia_side._Pair``). ``PeerCounter.add``
increments the counter and returns its value; every call is logged by the server before
it runs and its result by the driver before the awaiting handler resumes.

``PeerDriver`` keeps K calls outstanding with K chains: each chain is an ``async``
handler that awaits one call after another (the dispatcher runs other messages while a
handler awaits). A phase (warm-up, then the timed one) ends when every chain has
finished; the driver then prints one JSON line (``ambrosia.bench.peers.Measurement``).
The bookkeeping of the measurement (samples, clocks, counts) is process state, outside
the immortal's logged state, like the ping client's samples: a fresh run never replays.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ambrosia.bench.ambrosia_side import _Pair
from ambrosia.bench.peers import (
    PAYLOAD,
    Measurement,
    ModeSpec,
    PeerUnavailable,
    client_timeout_s,
    measurement_document,
    parse_measurement,
)
from ambrosia.binding.immortal import Immortal, rpc

__all__ = ["PeerCounter", "PeerDriver", "run"]

DURABILITY = (
    "embedded local-file log (both processes); every log page written with O_DSYNC "
    "before the calls in it run or their results are delivered"
)
_ENV = "AMBROSIA_PEERS_"


class PeerCounter(Immortal):
    def __init__(self) -> None:
        self.calls = 0
        self.bytes = 0

    @rpc
    def add(self, payload: bytes) -> int:
        self.calls += 1
        self.bytes += len(payload)
        return self.calls


@dataclass(slots=True)
class _Phase:
    remaining: int
    chains_left: int
    deadline: float
    began: float = field(default_factory=time.perf_counter)
    samples: list[int] = field(default_factory=list)


# Process state of the measurement (never checkpointed, see the module's docstring).
_phases: dict[int, _Phase] = {}
_totals = {"made": 0, "top": 0}


def _setting(name: str) -> str:
    value = os.environ.get(_ENV + name)
    if value is None:
        raise RuntimeError(f"{_ENV}{name} is not set")
    return value


class PeerDriver(Immortal):
    def __init__(self) -> None:
        self.phases_done = 0

    async def on_first_start(self) -> None:
        self.this.start.fork(0)

    @rpc
    def start(self, phase: int) -> None:
        count = int(_setting("WARMUP" if phase == 0 else "CALLS"))
        if phase == 0 and count == 0:
            self.this.start.fork(1)
            return
        chains = max(1, min(int(_setting("IN_FLIGHT")), count))
        _phases[phase] = _Phase(
            remaining=count,
            chains_left=chains,
            deadline=time.monotonic() + float(_setting("MAX_SECONDS")),
        )
        for _ in range(chains):
            self.this.chain.fork(phase)

    @rpc
    async def chain(self, phase: int) -> None:
        state = _phases[phase]
        counter = self.proxy(PeerCounter, "server")
        while state.remaining > 0 and time.monotonic() < state.deadline:
            state.remaining -= 1
            _totals["made"] += 1
            started = time.perf_counter_ns()
            value = await counter.add(PAYLOAD)
            state.samples.append(time.perf_counter_ns() - started)
            _totals["top"] = max(_totals["top"], value)
        state.chains_left -= 1
        if state.chains_left:
            return
        self.phases_done += 1
        if phase == 0:
            self.this.start.fork(1)
        elif not self.replaying:
            measurement = Measurement(
                samples_ns=state.samples,
                seconds=time.perf_counter() - state.began,
                last_value=_totals["top"],
                expected_value=_totals["made"],
            )
            print(measurement_document(measurement).decode(), flush=True)


def _run_mode(spec: ModeSpec, workdir: Path) -> Measurement:
    pair = _Pair(
        workdir / spec.mode,
        None,
        True,
        {
            _ENV + "CALLS": str(spec.calls),
            _ENV + "WARMUP": str(spec.warmup),
            _ENV + "IN_FLIGHT": str(spec.in_flight),
            _ENV + "MAX_SECONDS": str(spec.max_seconds),
        },
    )
    try:
        pair.start("server", "ambrosia.bench.peers_ambrosia:PeerCounter")
        client = pair.start("client", "ambrosia.bench.peers_ambrosia:PeerDriver")
        assert client.stdout is not None
        deadline = time.monotonic() + client_timeout_s(spec)
        # A blocking readline: a client that hangs is stopped by the caller's Ctrl-C; one
        # that dies closes its output, which ends the read.
        while time.monotonic() < deadline:
            line = client.stdout.readline()
            if not line:
                raise RuntimeError(f"the ambrosia driver exited early: {pair.diagnosis()}")
            if line.startswith("{"):
                return parse_measurement(line.encode())
        raise RuntimeError(f"the ambrosia driver took longer than {client_timeout_s(spec)} s")
    finally:
        pair.stop()


def run(system: str, modes: Sequence[ModeSpec], workdir: Path) -> tuple[str, list[Measurement]]:
    try:
        import ambrosia.host  # noqa: F401 - the runtime the pair's processes import
    except ImportError as error:  # pragma: no cover - the package itself is broken
        raise PeerUnavailable(f"the ambrosia runtime cannot be imported: {error}") from error
    return DURABILITY, [_run_mode(spec, workdir) for spec in modes]
