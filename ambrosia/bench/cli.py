"""``ambrosia-bench``: the paper's evaluation (section 7) on this machine, in one command.

Subcommands:

- ``throughput``: for each message size, the ambrosia immortals and then the gRPC
  baseline stream payloads for ``--duration`` seconds after ``--warmup``; calls/s and MB/s
  per size per system, and the ratio (paper Figure 5).
- ``ping``: one outstanding call at a time; percentiles and mean (paper Table 1). Two
  more rows are the machine's floors, beside which the tails of the other two are read
  (``ambrosia.bench.floors``): ``tcp``, a bare TCP echo between two processes, and
  ``cpu``, a fixed unit of CPU work timed again and again. They have no streaming
  counterpart, so ``throughput`` and ``cost`` refuse them.
- ``cost``: monthly USD per MB/s ingested versus message size for the serverless and VM
  designs (paper Figure 6), the VM designs priced from measured throughput: a results file
  (``--results``) or a fresh throughput run.
- ``peers``: a durable counter on ambrosia and on Restate, DBOS (SQLite, PostgreSQL) and
  Temporal, one call at a time and with K in flight (``ambrosia.bench.peers``).
- ``run CONFIG``: an experiment described in a TOML file (see ``bench_configs/``). The
  file is turned into the same command-line options, so a config can do nothing a
  command line cannot.

Every run writes ``results.json``, ``results.md`` and plots into ``--out`` (by default
``results/<timestamp>-<command>/``) and prints the table. Progress
(``ambrosia.bench.progress``) is a bar on a terminal, else one line per finished point,
on standard error. Ctrl-C stops the run, stops the processes it started, and still
writes and prints what finished (the results file then says ``"complete": false``), exit status 130.

Exit status: 0 done; 1 a measurement failed; 2 ``ambrosia-bench: error: ...``, a wrong
setting (an unusable ``--log`` URL or storage, a bad experiment config), found before
any process starts and before the output directory is made; 130 interrupted.

The ambrosia side lives in ``ambrosia.bench.ambrosia_side`` and is imported only when the
ambrosia system is asked for, so the gRPC baseline and the cost model work without it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import shutil
import sys
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from ambrosia.bench import cost, floors, grpc_side, report
from ambrosia.bench.failover import add_arguments as add_failover_arguments
from ambrosia.bench.failover import run_failover_bench
from ambrosia.bench.peers import add_arguments as add_peers_arguments
from ambrosia.bench.peers import run_peers_bench
from ambrosia.bench.progress import Progress
from ambrosia.bench.report import PingResult, Results, ThroughputPoint
from ambrosia.bench.sizes import format_size, parse_sizes
from ambrosia.errors import AmbrosiaError, ConfigError

__all__ = ["main"]

SYSTEMS = ("ambrosia", "grpc", "tcp", "cpu")
# The systems that stream payloads; tcp and cpu only measure the machine's floors.
STREAMING_SYSTEMS = ("ambrosia", "grpc")
default_sizes = "16..64K"
# 13 sizes x 2 systems x (3 s + 1 s warm-up) is about 104 s, leaving room for process
# start-up inside the 3-minute budget of a default run.
default_duration_s = 3.0
default_warmup_s = 1.0
default_ping_count = 10_000
default_ping_warmup = 1_000
_exit_failed = 1
_exit_config = 2
_exit_interrupted = 130


# -- the ambrosia side, loaded lazily -----------------------------------------------------


def _ambrosia_side() -> ModuleType:
    try:
        return importlib.import_module("ambrosia.bench.ambrosia_side")
    except ModuleNotFoundError as error:
        if error.name != "ambrosia.bench.ambrosia_side":
            raise
        raise ConfigError(
            "the ambrosia side of the benchmark (ambrosia.bench.ambrosia_side) is missing "
            "from this installation; run with --systems grpc"
        ) from error


# -- options ---------------------------------------------------------------------------


def _systems_option(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """The ``--systems`` parser of a command that can measure ``allowed``."""

    def parse(text: str) -> list[str]:
        systems = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in systems if name not in SYSTEMS]
        if unknown or not systems:
            raise argparse.ArgumentTypeError(
                f"unknown systems {unknown}; choose from {', '.join(allowed)}"
            )
        floors_named = [name for name in systems if name not in allowed]
        if floors_named:
            raise argparse.ArgumentTypeError(
                f"{', '.join(floors_named)}: ping floors only (nothing to stream); "
                f"this command takes {', '.join(allowed)}"
            )
        return systems

    return parse


def _sizes(text: str) -> list[int]:
    try:
        return parse_sizes(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, help="output directory (default results/<timestamp>-<command>)"
    )
    parser.add_argument("--json", type=Path, help="also write the results JSON here")
    parser.add_argument(
        "--keep-work",
        action="store_true",
        help="keep the ambrosia logs in <out>/work after the run",
    )


def _add_throughput(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=parse_sizes(default_sizes),
        help=f"message sizes, as 16..64K or 16,1K,64K (default {default_sizes})",
    )
    parser.add_argument(
        "--duration",
        type=_positive_float,
        default=default_duration_s,
        help=f"measured seconds per point (default {default_duration_s})",
    )
    parser.add_argument(
        "--warmup",
        type=_non_negative_float,
        default=default_warmup_s,
        help=f"warm-up seconds per point (default {default_warmup_s})",
    )
    parser.add_argument(
        "--no-persist",
        dest="persist",
        action="store_false",
        help="ambrosia skips the log write (shows what durability costs)",
    )


def _add_common(parser: argparse.ArgumentParser, *, ping: bool = False) -> None:
    allowed = SYSTEMS if ping else STREAMING_SYSTEMS
    parser.add_argument(
        "--systems",
        type=_systems_option(allowed),
        default=list(allowed),
        help="comma list of ambrosia, grpc, tcp, cpu (tcp: a bare TCP echo between two "
        "processes; cpu: a fixed unit of CPU work; the machine's floors; default all four)"
        if ping
        else "comma list of ambrosia, grpc (default both; tcp and cpu are ping floors only)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="ambrosia's links use mutual TLS (certificates made for the run) instead of "
        "plain TCP on loopback",
    )
    parser.add_argument(
        "--log",
        dest="logs",
        action="append",
        metavar="URL",
        help="ambrosia log URL, any backend (default: the embedded local "
        "file); repeat to compare backends",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ambrosia-bench",
        description="Reproduce the A.M.B.R.O.S.I.A paper's evaluation on this machine.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    failover = commands.add_parser(
        "failover", help="kill the primary N times under load; time to the first call served"
    )
    add_failover_arguments(failover)

    peers = commands.add_parser(
        "peers", help="a durable counter on ambrosia, Restate, DBOS and Temporal, side by side"
    )
    add_peers_arguments(peers)

    throughput = commands.add_parser("throughput", help="streaming throughput vs gRPC")
    _add_throughput(throughput)
    _add_common(throughput)
    _add_output(throughput)

    ping = commands.add_parser("ping", help="round-trip latency, one call at a time")
    ping.add_argument(
        "--count",
        type=_positive_int,
        default=default_ping_count,
        help=f"timed round trips (default {default_ping_count})",
    )
    ping.add_argument(
        "--warmup",
        type=_non_negative_int,
        default=default_ping_warmup,
        help=f"untimed round trips first (default {default_ping_warmup})",
    )
    _add_common(ping, ping=True)
    _add_output(ping)

    cost_parser = commands.add_parser("cost", help="monthly USD per MB/s vs message size")
    cost_parser.add_argument(
        "--results", type=Path, help="a throughput results JSON (default: measure now)"
    )
    cost_parser.add_argument(
        "--prices",
        type=Path,
        action="append",
        help="price sheet TOML; repeat (default: bench_configs/prices-*)",
    )
    cost_parser.add_argument(
        "--ingest-mb-per-s",
        type=_positive_float,
        default=100.0,
        help="the scenario's ingest rate (default 100, as the paper)",
    )
    _add_throughput(cost_parser)
    _add_common(cost_parser)
    _add_output(cost_parser)

    deployment = commands.add_parser(
        "deployment-cost",
        help="monthly USD of what infra/ provisions (nodes and log bandwidth)",
    )
    deployment.add_argument(
        "--prices", type=Path, help="a VM price sheet (default: the vm sheet in bench_configs/)"
    )
    deployment.add_argument(
        "--nodes", type=int, default=2, help="cluster nodes (default 2, as the Terraform)"
    )
    deployment.add_argument(
        "--log-mb-per-s",
        type=float,
        default=1.0,
        help="log bandwidth of all instances together, MB/s (default 1)",
    )

    run = commands.add_parser("run", help="run an experiment config (TOML)")
    run.add_argument("config", type=Path, help="the experiment, e.g. bench_configs/*.toml")
    run.add_argument(
        "--out", type=Path, help="output directory (default results/<timestamp>-<command>)"
    )
    return parser


# -- running ---------------------------------------------------------------------------


def _label(system: str, log: str | None, logs: Sequence[str | None]) -> str:
    # The first backend keeps the plain name, which the ratio and cost rows look for.
    if system != "ambrosia" or log == logs[0]:
        return system
    return f"ambrosia@{log}"


def _relabel(point: ThroughputPoint, system: str) -> ThroughputPoint:
    return (
        report.throughput_point(system, point.size_bytes, point.messages, point.seconds)
        if point.seconds > 0
        else point
    )


def _measure_throughput(
    options: argparse.Namespace, workdir: Path, progress: Progress, results: Results
) -> None:
    """Size by size, every system at that size before the next size.

    Interleaved rather than one system's whole sweep after the other's: a shared or
    virtual machine's speed drifts over minutes, and each ratio should compare two
    systems measured under the same conditions.
    """
    logs: list[str | None] = options.logs or [None]
    for size in options.sizes:
        for system in options.systems:
            for log in logs if system == "ambrosia" else [None]:
                label = _label(system, log, logs)
                try:
                    if system == "ambrosia":
                        points = _ambrosia_side().run_throughput(
                            [size],
                            duration_s=options.duration,
                            warmup_s=options.warmup,
                            log_url=log,
                            persist=options.persist,
                            tls=options.tls,
                            workdir=workdir / label,
                            on_progress=progress,
                        )
                    else:
                        points = grpc_side.run_throughput(
                            [size],
                            duration_s=options.duration,
                            warmup_s=options.warmup,
                            on_progress=progress,
                        )
                except KeyboardInterrupt as interrupt:
                    finished = getattr(interrupt, "points", [])
                    results.throughput += [
                        _relabel(p, label) for p in finished if isinstance(p, ThroughputPoint)
                    ]
                    raise
                for point in points:
                    results.throughput.append(_relabel(point, label))
                    progress.point_done(
                        f"{label} {format_size(point.size_bytes)}",
                        f"{point.messages_per_second:,.0f} calls/s, "
                        f"{point.megabytes_per_second:.1f} MB/s",
                    )


def _measure_ping(
    options: argparse.Namespace, workdir: Path, progress: Progress, results: Results
) -> None:
    logs: list[str | None] = options.logs or [None]
    for system in options.systems:
        for log in logs if system == "ambrosia" else [None]:
            result: PingResult
            if system == "ambrosia":
                result = _ambrosia_side().run_ping(
                    count=options.count,
                    warmup=options.warmup,
                    log_url=log,
                    tls=options.tls,
                    workdir=workdir / _label(system, log, logs),
                    on_progress=progress,
                )
            elif system == "tcp":
                result = floors.run_ping(
                    count=options.count, warmup=options.warmup, on_progress=progress
                )
            elif system == "cpu":
                result = floors.run_cpu_floor(
                    count=options.count, warmup=options.warmup, on_progress=progress
                )
            else:
                result = grpc_side.run_ping(
                    count=options.count, warmup=options.warmup, on_progress=progress
                )
            label = _label(system, log, logs)
            if result.system != label:
                result = PingResult(
                    label,
                    result.count,
                    result.p50_ms,
                    result.p90_ms,
                    result.p99_ms,
                    result.p999_ms,
                    result.mean_ms,
                )
            results.ping.append(result)
            progress.point_done(
                f"{label} ping", f"p50 {result.p50_ms:.3f} ms, p99 {result.p99_ms:.3f} ms"
            )


def _default_price_sheets() -> list[Path]:
    for folder in (
        Path.cwd() / "bench_configs",
        Path(__file__).resolve().parents[2] / "bench_configs",
    ):
        sheets = sorted(folder.glob("prices-*.toml"))
        if sheets:
            return sheets
    raise ConfigError("no price sheets found in bench_configs/; pass --prices FILE")


def _deployment_cost(options: argparse.Namespace) -> int:
    sheets = [options.prices] if options.prices else _default_price_sheets()
    for path in sheets:
        prices = cost.load_price_sheet(path)
        if isinstance(prices, cost.VmPrices):
            result = cost.deployment_cost(
                prices, nodes=options.nodes, log_mb_per_s=options.log_mb_per_s
            )
            print(cost.describe_deployment_cost(path, prices, result), end="")
            return 0
    raise ConfigError(f"no VM price sheet among {', '.join(map(str, sheets))}")


def _compute_cost(options: argparse.Namespace, results: Results) -> None:
    sheets = [cost.load_price_sheet(path) for path in options.prices or _default_price_sheets()]
    sizes = sorted({point.size_bytes for point in results.throughput}) or options.sizes
    results.cost = cost.cost_points(
        sheets,
        sizes,
        cost.measured_rates(results.throughput),
        cost.Scenario(ingest_mb_per_s=options.ingest_mb_per_s),
    )
    results.config["price_sheets"] = [
        {"design": type(sheet).__name__, "source": sheet.source, "date": sheet.date}
        for sheet in sheets
    ]


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _config(options: argparse.Namespace) -> dict[str, Any]:
    return {
        key: _plain(value) for key, value in vars(options).items() if key not in {"out", "json"}
    }


def _check_log(log_url: str) -> None:
    """ConfigError unless ``log_url`` is well formed and its storage can be opened.

    Opened as the benchmark's server opens it (credentials, bucket or container,
    reachability), here, so that a wrong URL is one line before any process starts.
    """
    from ambrosia.backends import check_store_url, open_store

    check_store_url(log_url)

    async def probe() -> None:
        store = await open_store(log_url, "server")
        await store.close()

    asyncio.run(probe())


def _points_total(options: argparse.Namespace) -> int:
    """How many points the run measures: each system (ambrosia once per log) at each size."""
    runs = sum(len(options.logs or [None]) if s == "ambrosia" else 1 for s in options.systems)
    return runs if options.command == "ping" else runs * len(options.sizes)


def _execute(options: argparse.Namespace) -> int:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir: Path = options.out or Path("results") / f"{stamp}-{options.command}"
    workdir = out_dir / "work"
    results = Results(command=options.command, config=_config(options))
    measuring = options.command != "cost" or options.results is None
    if measuring and "ambrosia" in options.systems:
        _ambrosia_side()  # fail before any measurement, not after the gRPC half
        for log_url in options.logs or []:
            _check_log(log_url)
    out_dir_existed = out_dir.exists()
    progress = Progress(_points_total(options) if measuring else 0)
    status = 0
    try:
        if options.command == "throughput":
            _measure_throughput(options, workdir, progress, results)
        elif options.command == "ping":
            _measure_ping(options, workdir, progress, results)
        else:
            if options.results is not None:
                results.throughput = report.load_results(options.results).throughput
                if not results.throughput:
                    raise ConfigError(f"{options.results} holds no throughput rows")
            else:
                _measure_throughput(options, workdir, progress, results)
            _compute_cost(options, results)
    except KeyboardInterrupt:
        results.complete = False
        status = _exit_interrupted
    finally:
        progress.close()
        if not options.keep_work:
            shutil.rmtree(workdir, ignore_errors=True)
        if not out_dir_existed and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a run that failed before any result leaves no empty folder
    written = report.write_outputs(out_dir, results)
    if options.json is not None:
        report.write_json(options.json, results)
        written.append(options.json)
    print(report.markdown(results))
    print(f"Wrote {', '.join(str(path) for path in written)}")
    if status:
        print("Interrupted: the results above are the points that finished.", file=sys.stderr)
    return status


# -- experiment configs --------------------------------------------------------------------

_CONFIG_KEYS = {
    "command",
    "systems",
    "sizes",
    "duration_s",
    "warmup_s",
    "logs",
    "persist",
    "count",
    "warmup",
    "prices",
    "results",
    "ingest_mb_per_s",
    "description",
}


def config_arguments(path: Path) -> list[str]:
    """The command line an experiment config stands for (paths relative to the file)."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"cannot read experiment config {path}: {error}") from error
    unknown = document.keys() - _CONFIG_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}")
    command = document.get("command")
    if command not in {"throughput", "ping", "cost"}:
        raise ConfigError(f"{path}: command must be throughput, ping or cost, not {command!r}")
    arguments = [command]

    def relative(value: str) -> str:
        return str(path.parent / value)

    sizes = document.get("sizes")
    if sizes is not None:
        arguments += [
            "--sizes",
            sizes if isinstance(sizes, str) else ",".join(str(size) for size in sizes),
        ]
    if "systems" in document:
        arguments += ["--systems", ",".join(document["systems"])]
    for log in document.get("logs", []):
        if log != "default":
            arguments += ["--log", log]
    if command == "ping":
        for key in ("count", "warmup"):
            if key in document:
                arguments += [f"--{key}", str(document[key])]
    else:
        if "duration_s" in document:
            arguments += ["--duration", str(document["duration_s"])]
        if "warmup_s" in document:
            arguments += ["--warmup", str(document["warmup_s"])]
        if document.get("persist") is False:
            arguments.append("--no-persist")
    if command == "cost":
        for sheet in document.get("prices", []):
            arguments += ["--prices", relative(sheet)]
        if "results" in document:
            arguments += ["--results", relative(document["results"])]
        if "ingest_mb_per_s" in document:
            arguments += ["--ingest-mb-per-s", str(document["ingest_mb_per_s"])]
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    options = parser.parse_args(argv)
    try:
        if options.command == "deployment-cost":
            return _deployment_cost(options)
        if options.command == "run":
            arguments = config_arguments(options.config)
            if options.out is not None:
                arguments += ["--out", str(options.out)]
            config_path = options.config
            options = parser.parse_args(arguments)
            options.experiment = {"config": str(config_path), "arguments": arguments}
        if options.command == "failover":
            return run_failover_bench(options)
        if options.command == "peers":
            return run_peers_bench(options)
        return _execute(options)
    except ConfigError as error:
        print(f"ambrosia-bench: error: {error}", file=sys.stderr)
        return _exit_config
    except (AmbrosiaError, ValueError, RuntimeError, OSError) as error:
        print(f"ambrosia-bench: error: {error}", file=sys.stderr)
        return _exit_failed


if __name__ == "__main__":
    sys.exit(main())
