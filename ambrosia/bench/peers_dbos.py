"""The DBOS rows of ``ambrosia-bench peers``: a workflow with one transaction step.

DBOS (PyPI ``dbos``) is a library: the workflows run in the application's own process and
their progress is kept in a database. The counter is a row of a table; ``add(key,
payload)`` is a ``@DBOS.workflow`` whose one step is a datasource transaction
(``UPDATE ... RETURNING``) adding one call and the payload's length, and returning the new
count. DBOS records the workflow's start and its end, and the step's output in the
step's own transaction, so a recovered process neither repeats nor loses an increment.

Two databases:

- ``dbos-sqlite``: two SQLite files, DBOS's system database and the application's (the
  counter), with DBOS's connection settings (SQLite's own defaults for the journal and
  ``synchronous``). One file for both stalls concurrent workflows on its write lock for
  DBOS's 30 s busy timeout;
- ``dbos-postgres``: a PostgreSQL cluster made for the run with the machine's server
  programs (``initdb`` and ``pg_ctl`` from ``pg_config --bindir``, a
  ``/usr/lib/postgresql/<version>/bin`` folder, or ``AMBROSIA_PEERS_PG_BIN``), listening on
  127.0.0.1 only, under PostgreSQL's default durability (``fsync``, synchronous commit),
  stopped and removed afterwards. Run as root, the cluster belongs to the ``postgres``
  user (PostgreSQL refuses to run as root). The counter's transaction uses READ
  COMMITTED, enough for an atomic ``UPDATE`` of one row and the cheapest isolation; the
  SQLite file serialises writers whatever the isolation.

Each mode runs in a client process of its own (``python -m ambrosia.bench.peers_dbos``)
on its own counter key; ``in-flight`` calls the synchronous workflow from K threads, as
a threaded web server would, with database pools of K connections. The client prints the
database's durability settings (read back from the database), then its measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import orjson

from ambrosia.bench.children import child_process
from ambrosia.bench.peers import (
    Measurement,
    ModeSpec,
    PeerUnavailable,
    client_arguments,
    client_timeout_s,
    drive,
    measurement_document,
    read_json_line,
    read_measurement,
    spec_arguments,
)

__all__ = ["find_postgres_bin", "run"]

_PG_START_TIMEOUT_S = 60
_PG_USER = "postgres"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def find_postgres_bin(environment: dict[str, str] | None = None) -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None when there is none."""
    env = os.environ if environment is None else environment
    candidates: list[str] = []
    if env.get("AMBROSIA_PEERS_PG_BIN"):
        candidates.append(env["AMBROSIA_PEERS_PG_BIN"])
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            candidates.append(
                subprocess.run(
                    [pg_config, "--bindir"], capture_output=True, text=True, timeout=10
                ).stdout.strip()
            )
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    for candidate in candidates:
        folder = Path(candidate)
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


class _Postgres:
    """A PostgreSQL cluster in ``directory``, on 127.0.0.1:``port``, for one run."""

    def __init__(self, directory: Path) -> None:
        folder = find_postgres_bin()
        if folder is None:
            raise PeerUnavailable(
                "no PostgreSQL server programs (initdb, pg_ctl) found; install the "
                "postgresql Debian package or set AMBROSIA_PEERS_PG_BIN"
            )
        self.bin = folder
        self.directory = directory
        self.data = directory / "data"
        self.port = _free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam(_PG_USER)
            except KeyError:
                raise PeerUnavailable(
                    "PostgreSQL refuses to run as root and there is no postgres user"
                ) from None
            runuser = shutil.which("runuser")
            if runuser is None:
                raise PeerUnavailable("running as root, and runuser is missing")
            os.chown(directory, user.pw_uid, user.pw_gid)
            self.prefix = [runuser, "-u", _PG_USER, "--"]
        self.started = False

    def _run(self, *command: str, timeout: float = _PG_START_TIMEOUT_S) -> None:
        completed = subprocess.run(
            [*self.prefix, *command], capture_output=True, text=True, timeout=timeout
        )
        if completed.returncode != 0:
            raise PeerUnavailable(
                f"{Path(command[0]).name} failed ({completed.returncode}): "
                f"{(completed.stderr or completed.stdout).strip()[-1000:]}"
            )

    def start(self) -> str:
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            _PG_USER,
            "-E",
            "UTF8",
            "--no-sync",  # the empty cluster: what matters is the commits measured later
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.directory} "
            "-c max_connections=400"
        )
        self.started = True
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.directory / "server.log"),
            "-w",
            "-t",
            str(_PG_START_TIMEOUT_S),
            "-o",
            options,
            "start",
        )
        return f"postgresql+psycopg://{_PG_USER}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        """``pg_ctl stop``; the postmaster's process id SIGKILLed if that fails."""
        if not self.started:
            return
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")
        except (PeerUnavailable, subprocess.TimeoutExpired):
            pid_file = self.data / "postmaster.pid"
            if pid_file.exists():
                pid = int(pid_file.read_text().split()[0])
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.started = False


def _require_dbos() -> None:
    if importlib.util.find_spec("dbos") is None:
        raise PeerUnavailable("the dbos package is not installed (pip install -e '.[peers]')")


def _run_client(url: str, app_url: str, spec: ModeSpec) -> tuple[str, Measurement]:
    with child_process(
        "ambrosia.bench.peers_dbos",
        ["--url", url, "--app-url", app_url, "--key", spec.mode, *spec_arguments(spec)],
        label=f"dbos {spec.mode} client",
    ) as client:
        event = orjson.loads(read_json_line(client, client_timeout_s(spec)))
        durability = event.get("durability") if isinstance(event, dict) else None
        if not isinstance(durability, str):
            raise RuntimeError(f"{client.name()} did not say its durability settings")
        measurement = read_measurement(client, client_timeout_s(spec))
        client.wait_ok(30)
    return durability, measurement


def run(system: str, modes: Sequence[ModeSpec], workdir: Path) -> tuple[str, list[Measurement]]:
    _require_dbos()
    postgres: _Postgres | None = None
    try:
        if system == "dbos-postgres":
            postgres = _Postgres(workdir)
            url = app_url = postgres.start()
        else:
            url = f"sqlite:///{workdir / 'dbos-system.sqlite'}"
            app_url = f"sqlite:///{workdir / 'dbos-app.sqlite'}"
        results = [_run_client(url, app_url, spec) for spec in modes]
    finally:
        if postgres is not None:
            postgres.stop()
    return results[0][0], [measurement for _, measurement in results]


# -- the client process ------------------------------------------------------------------------


def _durability(engine: Any, url: str) -> str:
    import sqlalchemy as sa

    with engine.connect() as connection:
        if url.startswith("sqlite"):
            journal = connection.execute(sa.text("PRAGMA journal_mode")).scalar()
            synchronous = connection.execute(sa.text("PRAGMA synchronous")).scalar()
            names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
            sync = names.get(synchronous, synchronous)
            return (
                "DBOS workflow + transaction step, committed to SQLite files (system, "
                f"application; journal_mode={journal}, synchronous={sync})"
            )
        settings = {
            name: connection.execute(sa.text(f"SHOW {name}")).scalar()
            for name in ("fsync", "synchronous_commit", "wal_sync_method")
        }
        version = connection.execute(sa.text("SHOW server_version")).scalar()
        return f"DBOS workflow + transaction step, committed to PostgreSQL {version} " + ", ".join(
            f"{name}={value}" for name, value in settings.items()
        )


def _client(options: argparse.Namespace) -> int:
    import sqlalchemy as sa
    from dbos import DBOS, SQLAlchemyDatasource

    url: str = options.url
    app_url: str = options.app_url
    pool = max(5, options.in_flight)
    DBOS(
        config={
            "name": "ambrosia-peers",
            "system_database_url": url,
            "sys_db_pool_size": pool,
            "log_level": "WARNING",
        }
    )
    datasource = SQLAlchemyDatasource.create(app_url, engine_kwargs={"pool_size": pool})
    with datasource.engine.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE TABLE IF NOT EXISTS peers_counter (key TEXT PRIMARY KEY, "
                "calls BIGINT NOT NULL, bytes BIGINT NOT NULL)"
            )
        )
        connection.execute(
            sa.text("INSERT INTO peers_counter VALUES (:key, 0, 0) ON CONFLICT DO NOTHING"),
            {"key": options.key},
        )
    isolation: Literal["SERIALIZABLE", "READ COMMITTED"] = (
        "SERIALIZABLE" if app_url.startswith("sqlite") else "READ COMMITTED"
    )

    @datasource.transaction(isolation_level=isolation)
    def bump(key: str, payload: bytes) -> int:
        row = (
            datasource.sql_session()
            .execute(
                sa.text(
                    "UPDATE peers_counter SET calls = calls + 1, bytes = bytes + :n "
                    "WHERE key = :key RETURNING calls"
                ),
                {"n": len(payload), "key": key},
            )
            .one()
        )
        return int(row[0])

    @DBOS.workflow()
    def add(key: str, payload: bytes) -> int:
        return int(bump(key, payload))

    DBOS.launch()
    try:
        print(
            orjson.dumps({"durability": _durability(datasource.engine, app_url)}).decode(),
            flush=True,
        )
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=options.in_flight)

        async def main() -> Measurement:
            loop = asyncio.get_running_loop()
            loop.set_default_executor(executor)

            async def call(payload: bytes) -> int:
                return int(await asyncio.to_thread(add, options.key, payload))

            return await drive(
                call,
                calls=options.calls,
                warmup=options.warmup,
                in_flight=options.in_flight,
                max_seconds=options.max_seconds,
            )

        measurement = asyncio.run(main())
        executor.shutdown()
        print(measurement_document(measurement).decode(), flush=True)
    finally:
        DBOS.destroy()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ambrosia.bench.peers_dbos")
    parser.add_argument("--url", required=True, help="the system database (sqlite or postgres)")
    parser.add_argument("--app-url", required=True, help="the counter's database")
    parser.add_argument("--key", required=True, help="the counter's key")
    client_arguments(parser)
    return _client(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
