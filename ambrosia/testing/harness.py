"""Run immortals as real OS processes: register, start, SIGKILL, restart, watch status.

Used by the crash tests and example tests; usable by applications for their own.
Each ``Deployment`` has its own catalog and log location under one directory, so tests
never share state (or a catalog and log URL of the caller's, on cloud storage).
Processes are started with ``python -m ambrosia.cli run`` exactly as a user would start
them, and killed by PID. Several processes may run one instance at once
(a primary and its standbys): each start then gets its own label.

Links between the processes are plain TCP on loopback (``--plaintext``), or with
``tls=True`` mutual TLS: a private CA is made in ``DIRECTORY/certs`` and each registered
instance gets its certificate there (``ambrosia.certs``), passed with ``--tls-*``.

Exit codes are evidence, so they are looked at before anything else: ``wait_for``
checks every process before it tests its condition (a condition that already holds
must not hide a process that died), and ``kill`` and ``start`` check the process they
replace, so a process that crashed by itself is never restarted silently. With
``strict_exits=True`` (the crash scenario and the soak) the only expected ends are the
harness's own: our SIGKILL, or whatever follows our ``terminate`` (its caller checks the
code). Without it, an exit 0 is accepted too (examples that finish on their own) and a
SIGKILL from elsewhere, as before.

``log_findings`` scans every log file a deployment's processes wrote for Python
tracebacks and CRITICAL lines, naming file and line.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ambrosia.certs import (
    CA_CERTIFICATE_FILE,
    create_ca,
    issue_instance_certificate,
    load_ca,
    tls_settings_for,
)

# Lines of a process log that are failures wherever they appear: an uncaught exception's
# traceback, and the coordinator's CRITICAL lines (log writer failed, lease lost,
# checkpoint failed, stopping). The log format is "TIME LEVEL NAME: MESSAGE".
LOG_FAILURE_MARKERS = ("Traceback (most recent call last)", " CRITICAL ")
TAIL_CHARACTERS = 3000

StopKind = Literal["kill", "terminate"]


class ProcessFailed(AssertionError):
    """A process ended in a way the harness did not cause; names it and its log tail."""


@dataclass(frozen=True, slots=True)
class LogFinding:
    """A failure line in a process log: ``path:line_number: text``."""

    path: Path
    line_number: int
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line_number}: {self.text}"


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
        catalog_url: str | None = None,
        env: dict[str, str] | None = None,
        run_args: tuple[str, ...] = (),
        tls: bool = False,
        strict_exits: bool = False,
    ) -> None:
        self.directory = directory
        self.tls = tls
        self.strict_exits = strict_exits
        self.certs_dir = directory / "certs"
        directory.mkdir(parents=True, exist_ok=True)
        self.status_dir = directory / "status"
        self.status_dir.mkdir(exist_ok=True)
        self.catalog_url = catalog_url or f"sqlite://{directory / 'catalog.db'}"
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
        # How the harness ended the current process of a label, if it did.
        self.stopped: dict[str, StopKind] = {}

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
        self,
        name: str,
        app: str,
        *,
        log_url: str | None = None,
        address: str | None = None,
        args: tuple[str, ...] = (),
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
            *args,
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
        subcommand: str = "run",
    ) -> subprocess.Popen[bytes]:
        """Start ``ambrosia run NAME``; ``label`` tells apart processes of one instance.

        ``subcommand="coordinator"``: its coordinator alone, for a binding process.

        The process is known by its label (default: the instance name) to ``kill``,
        ``terminate``, ``output`` and ``wait_for``; ``args`` and ``env`` add to the
        deployment's run arguments and environment for this start only.
        """
        key = label or name
        assert key not in self.processes or self.processes[key].poll() is not None
        count = self.starts.get(key, 0) + 1
        self.starts[key] = count
        log = open(self.directory / f"{key}.{count}.log", "wb")  # noqa: SIM115
        command = [sys.executable, "-m", "ambrosia.cli", subcommand, name]
        process = subprocess.Popen(
            [*command, *self.transport_args(name), *self.run_args, *args],
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=stdin,
        )
        log.close()
        self.processes[key] = process
        self.stopped.pop(key, None)
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
        """SIGKILL process ``name`` (a label); fail if it had already ended by itself."""
        process = self.processes.get(name)
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
            # A process that exited between the poll and the signal ended by itself.
            if process.returncode == -signal.SIGKILL:
                self.stopped[name] = "kill"
        self.check_exit(name)

    def terminate(self, name: str, timeout_s: float = 10.0) -> int:
        """SIGTERM (SIGKILL after ``timeout_s``) process ``name``; its exit code."""
        process = self.processes[name]
        if process.poll() is None:
            self.stopped[name] = "terminate"
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait()
        return process.returncode

    def stop_all(self) -> None:
        """SIGKILL whatever still runs, checking nothing (cleanup after a failure)."""
        for name, process in self.processes.items():
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
                self.stopped[name] = "kill"

    def exit_failure(self, name: str) -> str | None:
        """Why process ``name`` (a label) ended unexpectedly, or None if it did not.

        Expected: still running, our SIGKILL, anything after our ``terminate``; without
        ``strict_exits`` also an exit 0 or a SIGKILL from elsewhere.
        """
        process = self.processes.get(name)
        code = None if process is None else process.poll()
        if code is None:
            return None
        stopped = self.stopped.get(name)
        if stopped == "terminate" or (stopped == "kill" and code == -signal.SIGKILL):
            return None
        if not self.strict_exits and code in (0, -signal.SIGKILL):
            return None
        run = self.starts.get(name, 0)
        path = self.directory / f"{name}.{run}.log"
        return (
            f"{name} (run {run}, {path}) exited by itself with code {code}; "
            f"its last output:\n{self.output(name)[-TAIL_CHARACTERS:]}"
        )

    def check_exit(self, name: str) -> None:
        failure = self.exit_failure(name)
        if failure is not None:
            raise ProcessFailed(failure)

    def check_exits(self, *, ignore: tuple[str, ...] = ()) -> None:
        """Fail with the first process (but those in ``ignore``) that ended unexpectedly."""
        for name in self.processes:
            if name not in ignore:
                self.check_exit(name)

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
        """Poll ``predicate``; fail at once if a process (but those in ``ignore``) failed.

        Exit codes are checked before the predicate, every round, so a condition that
        already holds (a status file left by a process that then crashed) never hides
        a failure.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_exits(ignore=ignore)
            if predicate():
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
            time.sleep(0.02)

    def output(self, name: str, run: int | None = None) -> str:
        """What process ``name`` (a label) printed in its last run, or in run ``run``."""
        count = self.starts.get(name, 0) if run is None else run
        path = self.directory / f"{name}.{count}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def outputs(self, name: str) -> str:
        """Everything process ``name`` (a label) printed, over all its runs."""
        return "".join(self.output(name, run) for run in range(1, self.starts.get(name, 0) + 1))

    def log_files(self) -> list[Path]:
        """Every process log file of this deployment, in label and run order."""
        return [
            self.directory / f"{label}.{run}.log"
            for label in sorted(self.starts)
            for run in range(1, self.starts[label] + 1)
        ]

    def log_findings(self, allowed: tuple[str, ...] = ()) -> list[LogFinding]:
        """Traceback and CRITICAL lines in every process log, but lines holding an
        ``allowed`` substring (a caller that expects some says which, and why)."""
        findings = []
        for path in self.log_files():
            if not path.exists():
                continue
            lines = path.read_text(errors="replace").splitlines()
            for number, line in enumerate(lines, start=1):
                if any(marker in line for marker in LOG_FAILURE_MARKERS) and not any(
                    text in line for text in allowed
                ):
                    findings.append(LogFinding(path, number, line.strip()))
        return findings
