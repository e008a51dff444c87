"""``ambrosia-bench``: the paper's evaluation (section 7) on this machine, in one command.

Subcommands:

- ``throughput``: for each message size, the ambrosia immortals and then the gRPC
  baseline stream payloads for ``--duration`` seconds after ``--warmup``; calls/s and MB/s
  per size per system, and the ratio (paper Figure 5). With ``--systems ...,disk`` also
  the machine's floor for durable streaming (``ambrosia.bench.diskfloor``).
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
- ``standby-cost``: the storage requests one hot standby sends per second to s3 (moto)
  and azblob (Azurite), idle and under load, counted through a proxy and priced with
  the price sheets (``ambrosia.bench.standbycost``).
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
import dataclasses
import datetime
import importlib
import shutil
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ambrosia import eventloop
from ambrosia.bench import cost, diskfloor, floors, grpc_side, report
from ambrosia.bench.failover import add_arguments as add_failover_arguments
from ambrosia.bench.failover import run_failover_bench
from ambrosia.bench.options import non_negative_int, positive_float, positive_int
from ambrosia.bench.peers import add_arguments as add_peers_arguments
from ambrosia.bench.peers import run_peers_bench
from ambrosia.bench.progress import Progress
from ambrosia.bench.report import PingResult, Results, ThroughputPoint
from ambrosia.bench.sizes import format_size, parse_sizes
from ambrosia.bench.standbycost import add_arguments as add_standby_cost_arguments
from ambrosia.bench.standbycost import run_standby_cost
from ambrosia.errors import AmbrosiaError, ConfigError

__all__ = ["main"]

SYSTEMS = ("ambrosia", "grpc", "tcp", "cpu", "disk", "ambrosia-separate")
PING_SYSTEMS = ("ambrosia", "grpc", "tcp", "cpu", "disk")
# The systems that stream payloads; tcp and cpu only measure the machine's ping floors,
# disk its floor for durable streaming (``diskfloor``), measured only when asked for;
# ambrosia-separate the application as a binding process beside ``ambrosia coordinator``
# (``ambrosia run --separate``), throughput only, not in the default set.
STREAMING_SYSTEMS = ("ambrosia", "grpc", "disk", "ambrosia-separate")
STREAMING_DEFAULT = ("ambrosia", "grpc")
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
        if "ambrosia-separate" in floors_named:
            raise argparse.ArgumentTypeError(
                f"ambrosia-separate: measured by throughput only; "
                f"this command takes {', '.join(allowed)}"
            )
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
        type=positive_float,
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
    allowed = PING_SYSTEMS if ping else STREAMING_SYSTEMS
    parser.add_argument(
        "--systems",
        type=_systems_option(allowed),
        default=list(PING_SYSTEMS if ping else STREAMING_DEFAULT),
        help="comma list of ambrosia, grpc, tcp, cpu, disk (tcp: a bare TCP echo between two "
        "processes; cpu: a fixed unit of CPU work; disk: two small O_DSYNC writes one after "
        "the other, what a durable round trip logs; the machine's floors; default all five)"
        if ping
        else "comma list of ambrosia, grpc, disk (disk: durable 8 MiB page writes alone, "
        "the machine's floor), ambrosia-separate (the application as a binding process "
        "beside `ambrosia coordinator`); default ambrosia,grpc; tcp and cpu are ping "
        "floors only",
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
    standby_cost = commands.add_parser(
        "standby-cost",
        help="storage requests one hot standby makes per second on s3 and azblob, priced",
    )
    add_standby_cost_arguments(standby_cost)

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
        type=positive_int,
        default=default_ping_count,
        help=f"timed round trips (default {default_ping_count})",
    )
    ping.add_argument(
        "--warmup",
        type=non_negative_int,
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
        type=positive_float,
        default=100.0,
        help="the scenario's ingest rate (default 100, as the paper)",
    )
    _add_throughput(cost_parser)
    _add_common(cost_parser)
    _add_output(cost_parser)

    deployment = commands.add_parser(
        "deployment-cost",
        help="monthly USD of what infra/ provisions (nodes, storage, requests)",
    )
    deployment.add_argument(
        "--prices",
        type=Path,
        help="a vm or deployment-aws price sheet (default: the vm sheet in bench_configs/)",
    )
    usage = cost.AwsDeploymentUsage()
    deployment.add_argument(
        "--nodes", type=int, default=usage.nodes, help="cluster nodes (default 2, as the Terraform)"
    )
    deployment.add_argument(
        "--log-mb-per-s",
        type=float,
        default=usage.log_mb_per_s,
        help="log bandwidth of all instances together, MB/s (default 1)",
    )
    aws = deployment.add_argument_group("with a deployment-aws sheet only")
    aws.add_argument(
        "--log-puts-per-s",
        type=float,
        help=f"S3 PutObject calls per second of all instances together (default "
        f"{usage.log_puts_per_s:g}: one page per S3 round trip of a busy log)",
    )
    aws.add_argument(
        "--stored-days",
        type=float,
        help=f"days each logged byte stays in S3, live or as a noncurrent version (default "
        f"{usage.stored_days:g}, the Terraform's noncurrent_version_days)",
    )
    aws.add_argument(
        "--instances",
        type=int,
        help=f"immortals, a pod and a volume each (default {usage.instances}: the counter)",
    )
    aws.add_argument(
        "--standbys",
        type=int,
        help=f"hot standby pods, a volume each, tailing the logs in S3 (default "
        f"{usage.standbys}: one per immortal, as the overlays run them)",
    )
    aws.add_argument(
        "--catalog-reads-per-s",
        type=float,
        help=f"DynamoDB catalog reads per second (default {usage.catalog_reads_per_s:g})",
    )
    aws.add_argument(
        "--no-cluster",
        action="store_true",
        help="no EKS control plane (the Terraform without create_eks)",
    )

    run = commands.add_parser("run", help="run an experiment config (TOML)")
    run.add_argument("config", type=Path, help="the experiment, e.g. bench_configs/*.toml")
    run.add_argument(
        "--out",
        type=Path,
        help="output directory (default results/<timestamp>-<command>; for a config with "
        "steps, the config's out folder, each step in a subfolder of its name)",
    )
    run.add_argument(
        "--headline",
        type=Path,
        help="for a config with steps: the README whose headline block is rewritten from "
        "the new results (default: the config's headline file, unless --out is given)",
    )
    return parser


# -- running ---------------------------------------------------------------------------


def _label(system: str, log: str | None, logs: Sequence[str | None]) -> str:
    # The first backend keeps the plain name, which the ratio and cost rows look for.
    if system != "ambrosia" or log == logs[0]:
        return system
    return f"ambrosia@{log}"


def _relabel(point: ThroughputPoint, system: str) -> ThroughputPoint:
    return dataclasses.replace(point, system=system)


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
                    if system in ("ambrosia", "ambrosia-separate"):
                        points = _ambrosia_side().run_throughput(
                            [size],
                            duration_s=options.duration,
                            warmup_s=options.warmup,
                            log_url=log,
                            persist=options.persist,
                            tls=options.tls,
                            workdir=workdir / label,
                            on_progress=progress,
                            separate=system == "ambrosia-separate",
                        )
                    elif system == "disk":
                        points = diskfloor.run_throughput(
                            [size],
                            duration_s=options.duration,
                            warmup_s=options.warmup,
                            directory=workdir / label,
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
            elif system == "disk":
                result = floors.run_disk_floor(
                    directory=workdir / "disk-floor",
                    count=options.count,
                    warmup=options.warmup,
                    on_progress=progress,
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


_AWS_USAGE_OPTIONS = {
    "log_puts_per_s": "--log-puts-per-s",
    "stored_days": "--stored-days",
    "instances": "--instances",
    "standbys": "--standbys",
    "catalog_reads_per_s": "--catalog-reads-per-s",
}


def _deployment_cost(options: argparse.Namespace) -> int:
    given = {name: getattr(options, name) for name in _AWS_USAGE_OPTIONS}
    given = {name: value for name, value in given.items() if value is not None}
    if options.prices:
        prices = cost.load_price_sheet(options.prices)
        if isinstance(prices, cost.AwsDeploymentPrices):
            try:
                usage = cost.AwsDeploymentUsage(
                    nodes=options.nodes,
                    log_mb_per_s=options.log_mb_per_s,
                    cluster=not options.no_cluster,
                    **given,
                )
            except ValueError as error:
                raise ConfigError(str(error)) from error
            bill = cost.aws_deployment_cost(prices, usage)
            print(cost.describe_aws_deployment_cost(options.prices, prices, bill), end="")
            return 0
        sheets = [options.prices]
    else:
        sheets = _default_price_sheets()
    if given or options.no_cluster:
        flags = [_AWS_USAGE_OPTIONS[name] for name in given]
        flags += ["--no-cluster"] if options.no_cluster else []
        raise ConfigError(f"{', '.join(flags)}: only with --prices of a deployment-aws sheet")
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
    if measuring and {"ambrosia", "ambrosia-separate"} & set(options.systems):
        _ambrosia_side()  # fail before any measurement, not after the gRPC half
        # The loop the ambrosia processes will pick, by the same rule and environment.
        results.config["event_loop"] = eventloop.chosen_loop()
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
    # peers
    "calls",
    "in_flight",
    "max_seconds",
    "rounds",
}
_PEERS_KEYS = {"command", "systems", "calls", "warmup", "in_flight", "max_seconds", "rounds"}


def config_arguments(path: Path) -> list[str]:
    """The command line an experiment config stands for (paths relative to the file)."""
    document = _read_toml(path)
    if "steps" in document:
        raise ConfigError(f"{path} has steps: run it with ambrosia-bench run")
    return _command_arguments(document, path, str(path))


def _command_arguments(document: dict[str, Any], path: Path, where: str) -> list[str]:
    """The command line of one experiment (a config file, or one step of one)."""
    unknown = document.keys() - _CONFIG_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    command = document.get("command")
    if command not in {"throughput", "ping", "cost", "peers"}:
        raise ConfigError(
            f"{where}: command must be throughput, ping, cost or peers, not {command!r}"
        )
    arguments = [command]
    if command == "peers":
        unknown = document.keys() - _PEERS_KEYS - {"description", "name"}
        if unknown:
            raise ConfigError(f"{where}: not keys of a peers step: {sorted(unknown)}")
        if "systems" in document:
            arguments += ["--systems", ",".join(document["systems"])]
        for key in ("calls", "warmup", "in_flight", "max_seconds", "rounds"):
            if key in document:
                arguments += [f"--{key.replace('_', '-')}", str(document[key])]
        return arguments

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


# -- configs with steps (the reference run) ------------------------------------------------

_SUITE_KEYS = {"description", "out", "headline", "steps"}
_STEP_KEYS = _CONFIG_KEYS | {"name", "results_from"}


@dataclass(frozen=True, slots=True)
class Step:
    """One command of a config with steps: its folder name and its command line."""

    name: str
    arguments: list[str]


@dataclass(frozen=True, slots=True)
class Suite:
    """A config with ``[[steps]]``: commands run in order, each into ``out/<name>``."""

    path: Path
    out: Path | None
    headline: Path | None
    steps: list[Step]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"cannot read experiment config {path}: {error}") from error


def is_suite(path: Path) -> bool:
    """Whether the config at ``path`` has ``[[steps]]`` rather than one command."""
    return "steps" in _read_toml(path)


def load_suite(path: Path, out: Path | None = None) -> Suite:
    """The steps of a config with ``[[steps]]``, each step's output under ``out/<name>``.

    ``out`` (default: the config's ``out``, relative to the file) is the root folder; a
    step's ``results_from = "NAME"`` reads the results file that step NAME writes there.
    """
    document = _read_toml(path)
    unknown = document.keys() - _SUITE_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}")
    steps = document.get("steps")
    if not isinstance(steps, list) or not steps or not all(isinstance(s, dict) for s in steps):
        raise ConfigError(f"{path}: steps must be a non-empty array of tables ([[steps]])")
    root = out if out is not None else _relative(path, document.get("out"))
    headline = _relative(path, document.get("headline"))
    names: list[str] = []
    parsed: list[Step] = []
    for number, table in enumerate(steps, start=1):
        where = f"{path}: step {number}"
        unknown = table.keys() - _STEP_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
        name = table.get("name")
        if not isinstance(name, str) or not name or "/" in name or name in names:
            raise ConfigError(f"{where}: name must be a new folder name, not {name!r}")
        step = {key: value for key, value in table.items() if key not in {"name", "results_from"}}
        arguments = _command_arguments(step, path, where)
        source = table.get("results_from")
        if source is not None:
            if source not in names:
                raise ConfigError(f"{where}: results_from names no earlier step: {source!r}")
            if step.get("command") != "cost" or "results" in step:
                raise ConfigError(f"{where}: results_from is for a cost step without results")
            if root is not None:
                arguments += ["--results", str(root / source / "results.json")]
        if root is not None:
            arguments += ["--out", str(root / name)]
        names.append(name)
        parsed.append(Step(name, arguments))
    return Suite(path, root, headline, parsed)


def _relative(path: Path, value: object) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{path}: a folder or file must be a string, not {value!r}")
    return path.parent / value


def _run_suite(parser: argparse.ArgumentParser, options: argparse.Namespace) -> int:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    suite = load_suite(options.config, options.out)
    if suite.out is None:
        suite = load_suite(options.config, Path("results") / f"{stamp}-{options.config.stem}")
    # The config's own headline file only when its results go to its own folder: a run
    # into another folder must not rewrite a README that quotes the committed results.
    headline_file = options.headline or (suite.headline if options.out is None else None)
    for step in suite.steps:
        print(f"== step {step.name}: ambrosia-bench {' '.join(step.arguments)}", flush=True)
        step_options = parser.parse_args(step.arguments)
        step_options.experiment = {
            "config": str(options.config),
            "step": step.name,
            "arguments": step.arguments,
        }
        if step_options.command == "peers":
            status = run_peers_bench(step_options)
        else:
            status = _execute(step_options)
        if status:
            return status
    if headline_file is not None:
        from ambrosia.bench.headline import headline, replace_block
        from ambrosia.bench.peers import replace_summary, summary

        assert suite.out is not None
        table = headline(suite.out)
        text = replace_block(headline_file.read_text(), table)
        peers = [step.name for step in suite.steps if step.arguments[0] == "peers"]
        if peers:
            text = replace_summary(text, summary(suite.out / peers[-1]))
        headline_file.write_text(text)
        print(f"Rewrote the headline table of {headline_file}:\n{table}", end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    options = parser.parse_args(argv)
    try:
        if options.command == "deployment-cost":
            return _deployment_cost(options)
        if options.command == "run" and is_suite(options.config):
            return _run_suite(parser, options)
        if options.command == "run":
            arguments = config_arguments(options.config)
            if options.out is not None:
                arguments += ["--out", str(options.out)]
            config_path = options.config
            options = parser.parse_args(arguments)
            options.experiment = {"config": str(config_path), "arguments": arguments}
        if options.command == "failover":
            return run_failover_bench(options)
        if options.command == "standby-cost":
            return run_standby_cost(options)
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
