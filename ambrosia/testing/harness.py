"""Run immortals as real OS processes: register, start, SIGKILL, restart, watch status.

Used by the crash tests and example tests; usable by applications for their own.
Each ``Deployment`` has its own catalog and log location under one directory, so tests
never share state. Processes are started with ``python -m ambrosia.cli run`` exactly as a
user would start them, and killed by PID. Several processes may run one instance at once
(a primary and its standbys): each start then gets its own label.

Links between the processes are plain TCP on loopback (``--plaintext``), or with
``tls=True`` mutual TLS: a private CA is made in ``DIRECTORY/certs`` and each registered
instance gets its certificate there (``ambrosia.certs``), passed with ``--tls-*``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ambrosia.certs import (
    CA_CERTIFICATE_FILE,
    create_ca,
    issue_instance_certificate,
    load_ca,
    tls_settings_for,
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Deployment:
    def __init__(
        self,
        directory: Path,
        *,
        log_url: str | None = None,
        env: dict[str, str] | None = None,
        run_args: tuple[str, ...] = (),
        tls: bool = False,
    ) -> None:
        self.directory = directory
        self.tls = tls
        self.certs_dir = directory / "certs"
        directory.mkdir(parents=True, exist_ok=True)
        self.status_dir = directory / "status"
        self.status_dir.mkdir(exist_ok=True)
        self.catalog_url = f"sqlite://{directory / 'catalog.db'}"
        self.log_url = log_url or f"file://{directory / 'log'}"
        self.env = {
            **os.environ,
            "AMBROSIA_CATALOG": self.catalog_url,
            "AMBROSIA_STATUS_DIR": str(self.status_dir),
            **(env or {}),
        }
        self.run_args = run_args
        self.apps: dict[str, str] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.starts: dict[str, int] = {}

    def cli(self, *args: str, input_text: str | None = None) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "ambrosia.cli", *args],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
            input=input_text,
        )
        return done.stdout

    def register(
        self, name: str, app: str, *, log_url: str | None = None, address: str | None = None
    ) -> None:
        self.cli(
            "register",
            name,
            "--address",
            address or f"127.0.0.1:{free_port()}",
            "--log",
            log_url or self.log_url,
            "--app",
            app,
        )
        self.apps[name] = app
        if self.tls and not tls_settings_for(self.certs_dir, name).certificate_path.exists():
            if not (self.certs_dir / CA_CERTIFICATE_FILE).exists():
                create_ca(self.certs_dir)
            issue_instance_certificate(load_ca(self.certs_dir), self.certs_dir, name)

    def start(
        self,
        name: str,
        *,
        stdin: int | None = None,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        label: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``ambrosia run NAME``; ``label`` tells apart processes of one instance.

        The process is known by its label (default: the instance name) to ``kill``,
        ``terminate``, ``output`` and ``wait_for``; ``args`` and ``env`` add to the
        deployment's run arguments and environment for this start only.
        """
        key = label or name
        assert key not in self.processes or self.processes[key].poll() is not None
        count = self.starts.get(key, 0) + 1
        self.starts[key] = count
        log = open(self.directory / f"{key}.{count}.log", "wb")  # noqa: SIM115
        command = [sys.executable, "-m", "ambrosia.cli", "run", name]
        process = subprocess.Popen(
            [*command, *self.transport_args(name), *self.run_args, *args],
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=stdin,
        )
        log.close()
        self.processes[key] = process
        return process

    def transport_args(self, name: str) -> tuple[str, ...]:
        """How instance ``name`` talks to its peers: its TLS files, or loopback plain TCP."""
        if not self.tls:
            return ("--plaintext",)
        settings = tls_settings_for(self.certs_dir, name)
        return (
            "--tls-cert",
            str(settings.certificate_path),
            "--tls-key",
            str(settings.key_path),
            "--tls-ca",
            str(settings.ca_path),
        )

    def kill(self, name: str) -> None:
        process = self.processes.get(name)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()

    def terminate(self, name: str, timeout_s: float = 10.0) -> int:
        process = self.processes[name]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait()
        return process.returncode

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.kill(name)

    def status(self, name: str) -> dict[str, Any] | None:
        try:
            decoded: dict[str, Any] = json.loads((self.status_dir / f"{name}.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return decoded

    def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout_s: float,
        what: str,
        *,
        ignore: tuple[str, ...] = (),
    ) -> None:
        """Poll ``predicate``; fail at once if a process (but those in ``ignore``) failed."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            for name, process in self.processes.items():
                code = process.poll()
                if name not in ignore and code not in (None, -signal.SIGKILL, 0):
                    raise AssertionError(f"{name} exited with {code}: {self.output(name)[-3000:]}")
            time.sleep(0.02)
        raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")

    def output(self, name: str, run: int | None = None) -> str:
        """What process ``name`` (a label) printed in its last run, or in run ``run``."""
        count = self.starts.get(name, 0) if run is None else run
        path = self.directory / f"{name}.{count}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def outputs(self, name: str) -> str:
        """Everything process ``name`` (a label) printed, over all its runs."""
        return "".join(self.output(name, run) for run in range(1, self.starts.get(name, 0) + 1))
