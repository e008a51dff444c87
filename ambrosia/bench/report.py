"""Benchmark results: the row types, the results file, the Markdown table and the plots.

Every side of the benchmark (ambrosia immortals, the gRPC baseline, ping's bare TCP
floor) produces the same row types, computed by the same functions here, so their
numbers are comparable by construction:

- ``throughput_point`` turns a count of messages received in a time window into rates.
  A megabyte is 10**6 bytes throughout (rates, cost model, plots), as in cloud price sheets.
- ``latency_summary`` turns round-trip samples into percentiles by the nearest-rank
  method: the p-th percentile of n sorted samples is the ceil(p * n)-th smallest. It
  never interpolates, so every reported latency is one that was actually observed.

The results file (JSON, ``schema_version`` 1) holds::

    {
      "schema_version": 1,
      "command": "throughput" | "ping" | "cost" | "run",
      "created_utc": "2024-01-01T00:00:00Z",
      "complete": true,                 # false when interrupted: rows are what finished
      "machine": {"platform", "machine", "processor", "cpu_count", "memory_bytes"},
      "python": {"version", "implementation"},
      "packages": {"ambrosia", "grpcio", "protobuf", "matplotlib", "uvloop"},  # null: missing
      "git_commit": "40 hex digits" | null,
      "config": {...},                  # the options the run was made with
      "throughput": [{"system", "size_bytes", "messages", "seconds",
                      "messages_per_second", "megabytes_per_second",
                      "peak_rss_bytes": {"server": int, "client": int} | null}],
      "ping": [{"system", "count", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "mean_ms"}],
      "cost": [{"design", "size_bytes", "usd_per_month_per_mb_per_s"}]
    }

``bench_configs/SCHEMA.md`` documents the same schema for readers of the files.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import math
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ambrosia.bench.sizes import format_size

__all__ = [
    "PAPER_PING_MS",
    "PAPER_THROUGHPUT_RATIO",
    "SCHEMA_VERSION",
    "CostPoint",
    "PartialRun",
    "PingResult",
    "Results",
    "ThroughputPoint",
    "environment",
    "latency_summary",
    "load_results",
    "markdown",
    "peak_rss_of",
    "plot_cost",
    "plot_throughput",
    "process_peak_rss",
    "throughput_point",
    "write_json",
    "write_outputs",
]

SCHEMA_VERSION = 1
megabyte_bytes = 1_000_000

# The paper's figures to compare against. Figure 5 is only given as a plot; its one
# number in the text is the ratio at 16-byte messages (section 1 and 7.5).
PAPER_THROUGHPUT_RATIO: dict[int, float] = {16: 12.7}
# Table 1 of the paper, latency in milliseconds: p50, p90, p99, p99.9, mean.
PAPER_PING_MS: dict[str, tuple[float, float, float, float, float]] = {
    "Ambrosia-C#": (6.57, 7.1, 8.71, 11.34, 6.63),
    "Ambrosia-C++": (6.0, 6.47, 8.79, 12.48, 6.1),
    "gRPC": (0.5, 0.59, 0.8, 61.85, 0.58),
    "Azure Serverless": (31.62, 130.5, 324.7, 6708.0, 80.51),
}


@dataclass(frozen=True, slots=True)
class ThroughputPoint:
    """One system at one message size: messages received by the server in ``seconds``."""

    system: str
    size_bytes: int
    messages: int
    seconds: float
    messages_per_second: float
    megabytes_per_second: float
    # Peak resident set size (VmHWM) of each of the point's processes, by role; None
    # when it was not measured (a results file written before it was recorded).
    peak_rss_bytes: dict[str, int] | None = None


@dataclass(frozen=True, slots=True)
class PingResult:
    """Round-trip latency of one outstanding call at a time, in milliseconds."""

    system: str
    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    mean_ms: float


@dataclass(frozen=True, slots=True)
class CostPoint:
    """Monthly USD to ingest one MB/s (10**6 bytes per second) with one design."""

    design: str
    size_bytes: int
    usd_per_month_per_mb_per_s: float


class PartialRun(KeyboardInterrupt):
    """Ctrl-C during a run: carries the points that finished before it.

    A subclass of KeyboardInterrupt so that code which does not know it still stops.
    """

    def __init__(self, points: Sequence[ThroughputPoint | PingResult]) -> None:
        super().__init__(f"interrupted after {len(points)} finished points")
        self.points = list(points)


def throughput_point(
    system: str,
    size_bytes: int,
    messages: int,
    seconds: float,
    peak_rss_bytes: Mapping[str, int] | None = None,
) -> ThroughputPoint:
    """Rates of ``messages`` payloads of ``size_bytes`` received in ``seconds``."""
    if seconds <= 0:
        raise ValueError(f"measurement window must be positive, got {seconds} s")
    if messages < 0 or size_bytes < 1:
        raise ValueError(f"bad count {messages} or size {size_bytes}")
    rate = messages / seconds
    return ThroughputPoint(
        system=system,
        size_bytes=size_bytes,
        messages=messages,
        seconds=seconds,
        messages_per_second=rate,
        megabytes_per_second=rate * size_bytes / megabyte_bytes,
        peak_rss_bytes=dict(peak_rss_bytes) if peak_rss_bytes else None,
    )


def process_peak_rss(pid: int) -> int | None:
    """Peak resident set size (``VmHWM``) of live process ``pid``; None if unreadable."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def peak_rss_of(pids: Mapping[str, int | None]) -> dict[str, int]:
    """``process_peak_rss`` of each role's process, the unreadable ones left out."""
    peaks = {}
    for role, pid in pids.items():
        peak = process_peak_rss(pid) if pid is not None else None
        if peak is not None:
            peaks[role] = peak
    return peaks


def _peak_rss_row(row: Mapping[str, Any]) -> dict[str, int] | None:
    peaks = row.get("peak_rss_bytes")
    if peaks is None:
        return None
    if not isinstance(peaks, dict) or not all(
        isinstance(role, str) and isinstance(value, int) for role, value in peaks.items()
    ):
        raise ValueError(f"peak_rss_bytes must map process roles to byte counts, not {peaks!r}")
    return peaks


def _nearest_rank(sorted_samples: Sequence[int], fraction: float) -> int:
    rank = max(1, math.ceil(fraction * len(sorted_samples)))
    return sorted_samples[rank - 1]


def latency_summary(system: str, samples_ns: list[int]) -> PingResult:
    """Percentiles (nearest rank) and mean of round-trip samples given in nanoseconds."""
    if not samples_ns:
        raise ValueError("no latency samples to summarize")
    ordered = sorted(samples_ns)
    ms = 1e-6
    return PingResult(
        system=system,
        count=len(ordered),
        p50_ms=_nearest_rank(ordered, 0.50) * ms,
        p90_ms=_nearest_rank(ordered, 0.90) * ms,
        p99_ms=_nearest_rank(ordered, 0.99) * ms,
        p999_ms=_nearest_rank(ordered, 0.999) * ms,
        mean_ms=sum(ordered) / len(ordered) * ms,
    )


# -- the results file -------------------------------------------------------------------


@dataclass(slots=True)
class Results:
    """Everything one run produced; ``environment`` is filled in when it is written."""

    command: str
    config: dict[str, Any]
    throughput: list[ThroughputPoint] = field(default_factory=list)
    ping: list[PingResult] = field(default_factory=list)
    cost: list[CostPoint] = field(default_factory=list)
    complete: bool = True
    environment: dict[str, Any] = field(default_factory=dict)


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    # The repository of this source file, not the caller's working directory.
    repository = Path(__file__).resolve().parents[2]
    try:
        completed = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repository,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = completed.stdout.strip()
    return commit if completed.returncode == 0 and commit else None


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def environment() -> dict[str, Any]:
    """Machine, Python, package versions and git commit, for the results file."""
    return {
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "processor": platform.processor() or None,
            "cpu_count": os.cpu_count(),
            "memory_bytes": _memory_bytes(),
        },
        "python": {
            "version": platform.python_version(),
            "implementation": sys.implementation.name,
        },
        "packages": {
            name: _package_version(name)
            for name in ("ambrosia", "grpcio", "protobuf", "matplotlib", "uvloop")
        },
        "git_commit": _git_commit(),
    }


def to_document(results: Results) -> dict[str, Any]:
    """The JSON document of schema ``SCHEMA_VERSION`` for ``results``."""
    env = results.environment or environment()
    created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "schema_version": SCHEMA_VERSION,
        "command": results.command,
        "created_utc": created,
        "complete": results.complete,
        **env,
        "config": results.config,
        "throughput": [asdict(point) for point in results.throughput],
        "ping": [asdict(point) for point in results.ping],
        "cost": [asdict(point) for point in results.cost],
    }


def write_json(path: Path, results: Results) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(to_document(results), option=orjson.OPT_INDENT_2) + b"\n")


def _rows(document: Mapping[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    rows = document.get(key, [])
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"{path}: {key!r} must be a list of objects")
    return rows


def load_results(path: Path) -> Results:
    """Read a results file, refusing other schema versions with a clear message."""
    try:
        document = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(document, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    version = document.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(
            f"{path} has schema_version {version!r}; this ambrosia-bench reads {SCHEMA_VERSION}"
        )
    try:
        throughput = [
            throughput_point(
                str(row["system"]),
                int(row["size_bytes"]),
                int(row["messages"]),
                float(row["seconds"]),
                _peak_rss_row(row),
            )
            if "messages" in row and "seconds" in row
            else ThroughputPoint(
                system=str(row["system"]),
                size_bytes=int(row["size_bytes"]),
                messages=0,
                seconds=0.0,
                messages_per_second=float(row["messages_per_second"]),
                megabytes_per_second=float(row["megabytes_per_second"]),
                peak_rss_bytes=_peak_rss_row(row),
            )
            for row in _rows(document, "throughput", path)
        ]
        ping = [PingResult(**row) for row in _rows(document, "ping", path)]
        cost = [CostPoint(**row) for row in _rows(document, "cost", path)]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: malformed row: {error}") from error
    environment_keys = ("machine", "python", "packages", "git_commit")
    return Results(
        command=str(document.get("command", "")),
        config=dict(document.get("config", {})),
        throughput=throughput,
        ping=ping,
        cost=cost,
        complete=bool(document.get("complete", True)),
        environment={key: document.get(key) for key in environment_keys},
    )


# -- Markdown ----------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _peak_rss_cell(peaks: Mapping[str, int] | None) -> str:
    if not peaks:
        return "-"
    return " / ".join(
        f"{peaks[role] / _MiB:.0f}" if role in peaks else "-" for role in ("server", "client")
    )


_MiB = 1 << 20


def _throughput_markdown(points: Sequence[ThroughputPoint]) -> list[str]:
    systems = list(dict.fromkeys(point.system for point in points))
    by_key = {(point.system, point.size_bytes): point for point in points}
    sizes = sorted({point.size_bytes for point in points})
    header = ["size"]
    # Only systems run in processes of their own have a peak RSS to show.
    memory = {point.system for point in points if point.peak_rss_bytes}
    for system in systems:
        header += [f"{system} msg/s", f"{system} MB/s"]
        if system in memory:
            header.append(f"{system} peak RSS MiB (server / client)")
    compare = "ambrosia" in systems and "grpc" in systems
    if compare:
        header += ["ambrosia/grpc", "paper"]
    floor = "ambrosia" in systems and "disk" in systems
    if floor:
        header.append("ambrosia/disk")
    rows = []
    for size in sizes:
        row = [format_size(size)]
        for system in systems:
            point = by_key.get((system, size))
            row += (
                [_number(point.messages_per_second), _number(point.megabytes_per_second)]
                if point
                else ["-", "-"]
            )
            if system in memory:
                row.append(_peak_rss_cell(point.peak_rss_bytes if point else None))
        if compare:
            ours, theirs = by_key.get(("ambrosia", size)), by_key.get(("grpc", size))
            ratio = (
                f"{ours.messages_per_second / theirs.messages_per_second:.2f}x"
                if ours and theirs and theirs.messages_per_second > 0
                else "-"
            )
            paper = PAPER_THROUGHPUT_RATIO.get(size)
            row += [ratio, f"{paper}x" if paper else ""]
        if floor:
            ours, disk = by_key.get(("ambrosia", size)), by_key.get(("disk", size))
            row.append(
                f"{ours.megabytes_per_second / disk.megabytes_per_second:.2f}"
                if ours and disk and disk.megabytes_per_second > 0
                else "-"
            )
        rows.append(row)
    notes = (
        [
            "disk (machine floor): durable writes of 8 MiB log pages (O_DSYNC) and nothing "
            "else, the most any durable log can stream on this disk; its msg/s counts the "
            "messages of that size those bytes would carry. ambrosia/disk is the fraction "
            "of it ambrosia reached.",
            "",
        ]
        if "disk" in systems
        else []
    )
    return ["## Throughput (paper Figure 5)", "", *_table(header, rows), "", *notes]


# The machine floors of ping (``floors``): the rows every other tail is read against.
_PING_LABELS = {
    "tcp": "tcp (machine floor)",
    "cpu": "cpu (machine floor)",
    "disk": "disk (machine floor)",
}


def _tail_ratios(results: Sequence[PingResult]) -> str:
    """p99.9 over p50 of each measured row: how heavy its tail is, in its own units."""
    ratios = [
        f"{r.system} {r.p999_ms / r.p50_ms:.1f}x" if r.p50_ms > 0 else f"{r.system} -"
        for r in results
    ]
    return "p99.9 / p50: " + ", ".join(ratios)


def _ping_markdown(results: Sequence[PingResult]) -> list[str]:
    header = ["system", "count", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "mean ms"]
    rows = [
        [
            _PING_LABELS.get(r.system, r.system),
            str(r.count),
            *(f"{v:.3f}" for v in (r.p50_ms, r.p90_ms, r.p99_ms, r.p999_ms, r.mean_ms)),
        ]
        for r in results
    ]
    rows += [
        [f"paper: {name}", "", *(f"{v:g}" for v in values)]
        for name, values in PAPER_PING_MS.items()
    ]
    return [
        "## Ping latency (paper Table 1)",
        "",
        *_table(header, rows),
        "",
        _tail_ratios(results),
        "",
    ]


def _cost_markdown(points: Sequence[CostPoint]) -> list[str]:
    designs = list(dict.fromkeys(point.design for point in points))
    by_key = {
        (point.design, point.size_bytes): point.usd_per_month_per_mb_per_s for point in points
    }
    sizes = sorted({point.size_bytes for point in points})
    serverless = [d for d in designs if d.startswith("serverless")]
    header = ["size", *designs]
    if "ambrosia-vm" in designs and serverless:
        header += [f"{d}/ambrosia-vm" for d in serverless]
    rows = []
    for size in sizes:
        row = [format_size(size)]
        row += [f"{by_key[(d, size)]:.4g}" if (d, size) in by_key else "-" for d in designs]
        if "ambrosia-vm" in designs and serverless:
            ours = by_key.get(("ambrosia-vm", size))
            for design in serverless:
                theirs = by_key.get((design, size))
                row.append(f"{theirs / ours:.0f}x" if ours and theirs else "-")
        rows.append(row)
    return [
        "## Cost (paper Figure 6): USD per month per MB/s ingested",
        "",
        *_table(header, rows),
        "",
    ]


def markdown(results: Results) -> str:
    """The human-readable report of a run, with the paper's figures beside ours."""
    lines = [f"# ambrosia-bench {results.command}", ""]
    if not results.complete:
        lines += ["**Interrupted: only the points that finished are shown.**", ""]
    env = results.environment
    machine = env.get("machine") or {}
    if machine:
        lines += [
            f"Machine: {machine.get('platform')}, {machine.get('cpu_count')} CPUs, "
            f"Python {(env.get('python') or {}).get('version')}, "
            f"commit {env.get('git_commit') or 'unknown'}"
            + (
                f", ambrosia on the {results.config['event_loop']} event loop."
                if results.config.get("event_loop")
                else "."
            ),
            "",
        ]
    if results.throughput:
        lines += _throughput_markdown(results.throughput)
    if results.ping:
        lines += _ping_markdown(results.ping)
    if results.cost:
        lines += _cost_markdown(results.cost)
    return "\n".join(lines)


# -- plots -------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    # No display here, and none wanted: files only.
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def _size_axis(axes: Any, sizes: Sequence[int]) -> None:
    axes.set_xscale("log", base=2)
    axes.set_xticks(list(sizes))
    axes.set_xticklabels([format_size(size) for size in sizes], rotation=45, ha="right")
    axes.set_xlabel("message size")


def plot_throughput(points: Sequence[ThroughputPoint], path: Path) -> None:
    """Figure 5: MB/s versus message size, log-log, one line per system."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    for system in dict.fromkeys(point.system for point in points):
        mine = sorted((p for p in points if p.system == system), key=lambda p: p.size_bytes)
        axes.plot(
            [p.size_bytes for p in mine],
            [p.megabytes_per_second for p in mine],
            marker="o",
            label=system,
        )
    _size_axis(axes, sorted({point.size_bytes for point in points}))
    axes.set_yscale("log")
    axes.set_ylabel("throughput (MB/s)")
    axes.set_title("Throughput versus message size")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def plot_cost(points: Sequence[CostPoint], path: Path) -> None:
    """Figure 6: monthly USD per MB/s versus message size, log scale, one line per design."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    for design in dict.fromkeys(point.design for point in points):
        mine = sorted((p for p in points if p.design == design), key=lambda p: p.size_bytes)
        axes.plot(
            [p.size_bytes for p in mine],
            [p.usd_per_month_per_mb_per_s for p in mine],
            marker="o",
            label=design,
        )
    _size_axis(axes, sorted({point.size_bytes for point in points}))
    axes.set_yscale("log")
    axes.set_ylabel("USD per month per MB/s")
    axes.set_title("Cost of ingesting 1 MB/s for a month")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def write_outputs(out_dir: Path, results: Results) -> list[Path]:
    """results.json, results.md and the plots the rows allow; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if not results.environment:
        results.environment = environment()
    written = [out_dir / "results.json", out_dir / "results.md"]
    write_json(written[0], results)
    written[1].write_text(markdown(results) + "\n", encoding="utf-8")
    if results.throughput:
        written.append(out_dir / "figure5-throughput.png")
        plot_throughput(results.throughput, written[-1])
    if results.cost:
        written.append(out_dir / "figure6-cost.png")
        plot_cost(results.cost, written[-1])
    return written
