"""The ``ambrosia`` command as a user runs it: real subprocesses of ``python -m ambrosia.cli``.

Deployment-file handling for ``register`` and ``run``, and the promise that a wrong
deployment fails BEFORE anything starts, with exit code 2 and ``ambrosia: error: ...``:
malformed URL or file, missing container or bucket (created on request with
``--create-storage``), missing credentials, unreachable service, busy address. "Nothing
started" is checked from the outside: no lease was taken (the coordinator logs it), the
immortal never ran (its status file is absent), and the instance can start afterwards.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from ambrosia import cli as cli_module
from ambrosia.bench import cli as bench_cli
from ambrosia.testing.emulators import Azurite, MotoServer, free_loopback_ports

APP = "ambrosia.testing.workloads:ChainServer"
REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


class Cli:
    """Runs ``python -m ambrosia.cli`` with a private catalog, status dir and environment."""

    def __init__(self, directory: Path, env: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.status_dir = directory / "status"
        self.status_dir.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "AMBROSIA_CATALOG": f"sqlite://{directory / 'catalog.db'}",
            "AMBROSIA_STATUS_DIR": str(self.status_dir),
            **(env or {}),
        }
        self.env.pop("AMBROSIA_CONFIG", None)

    def __call__(self, *args: str, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ambrosia.cli", *args],
            env=self.env,
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def register(self, name: str, log_url: str, *extra: str) -> str:
        """Register ``name`` on a free port; returns its address."""
        address = f"127.0.0.1:{free_loopback_ports(1)[0]}"
        done = self("register", name, "--address", address, "--log", log_url, "--app", APP, *extra)
        assert done.returncode == 0, done.stderr
        return address

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "ambrosia.cli", *args],
            env=self.env,
            cwd=self.directory,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def ran(self, name: str) -> bool:
        return (self.status_dir / f"{name}.json").exists()


def refused(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit code 2, one clear error line, no traceback, no coordinator start-up."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "ambrosia: error: " in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "lease taken" not in done.stderr, done.stderr
    for fragment in fragments:
        assert fragment in done.stderr, done.stderr


def run_until_primary_then_stop(cli: Cli, *args: str) -> str:
    """Start ``ambrosia run ...``, wait until it is primary, SIGTERM it; its output."""
    process = cli.start("run", *args, "--plaintext")
    output: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            output.append(line)
            if ": primary (replayed" in line:
                break
        assert any(": primary (replayed" in line for line in output), "".join(output)
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=15)
        assert process.returncode == 0, "".join(output) + rest
        return "".join(output) + rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# -- the deployment file ------------------------------------------------------------------


def test_register_takes_log_and_address_from_the_deployment_file(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    (tmp_path / "ambrosia.toml").write_text(
        f'log = "file://{tmp_path}/default-log"\n'
        "[instances.special]\n"
        f'log = "file://{tmp_path}/special-log"\n'
        'address = "127.0.0.1:7999"\n'
    )
    assert cli("register", "plain", "--address", "127.0.0.1:7998").returncode == 0
    assert cli("register", "special").returncode == 0
    listing = cli("list").stdout
    assert f"file://{tmp_path}/default-log" in listing
    assert f"file://{tmp_path}/special-log" in listing and "127.0.0.1:7999" in listing
    # --log on the command line beats the file.
    done = cli("register", "third", "--address", "127.0.0.1:7997", "--log", "s3://bucket-b/p")
    assert done.returncode == 0 and "log s3://bucket-b/p" in done.stdout


def test_register_needs_a_log_url_from_somewhere(tmp_path: Path) -> None:
    refused(Cli(tmp_path)("register", "x", "--address", "127.0.0.1:7000"), "no log URL for x")


def test_config_flag_and_environment_variable(tmp_path: Path) -> None:
    elsewhere = tmp_path / "conf"
    elsewhere.mkdir()
    config = elsewhere / "prod.toml"
    config.write_text('log = "s3://from-flag/p"\n')
    cli = Cli(tmp_path)
    done = cli("--config", str(config), "register", "a", "--address", "127.0.0.1:7000")
    assert "log s3://from-flag/p" in done.stdout, done.stderr
    done = cli("register", "b", "--address", "127.0.0.1:7001", "--config", str(config))
    assert "log s3://from-flag/p" in done.stdout, done.stderr
    cli.env["AMBROSIA_CONFIG"] = str(config)
    done = cli("register", "c", "--address", "127.0.0.1:7002")
    assert "log s3://from-flag/p" in done.stdout, done.stderr
    refused(cli("--config", str(tmp_path / "nope.toml"), "list"), "nope.toml does not exist")


def test_run_refuses_a_bad_deployment_file_naming_file_and_key(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    cli.register("server", f"file://{tmp_path}/log")
    config = tmp_path / "ambrosia.toml"
    config.write_text("[coordinator]\ncheckpoint_log_byte = 1000\n")
    refused(
        cli("run", "server", "--plaintext"), f"{config}: coordinator.checkpoint_log_byte: unknown"
    )
    config.write_text("[coordinator\n")
    refused(cli("run", "server", "--plaintext"), f"{config}: not valid TOML")
    assert not cli.ran("server")


def test_run_precedence_command_line_file_registration(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    cli.register("server", f"file://{tmp_path}/registered")
    (tmp_path / "ambrosia.toml").write_text(
        f'[instances.server]\nlog = "file://{tmp_path}/from-file"\n'
        "coordinator = { lease_wait_s = 0.0 }\n"
    )
    run_until_primary_then_stop(cli, "server")
    assert (tmp_path / "from-file" / "server").is_dir()
    assert not (tmp_path / "registered").exists()
    run_until_primary_then_stop(cli, "server", "--log", f"file://{tmp_path}/from-flag")
    assert (tmp_path / "from-flag" / "server").is_dir()


# -- failing before anything starts --------------------------------------------------------


@pytest.mark.parametrize(
    ("log_url", "fragment"),
    [
        ("azblob://Bad_Container/p", "malformed azblob URL"),
        ("s3://x/p", "malformed s3 URL"),
        ("file://relative/dir", "must be file:///absolute/dir"),
        ("gopher://x/y", "unknown log store scheme 'gopher'"),
    ],
)
def test_run_refuses_a_malformed_log_url(tmp_path: Path, log_url: str, fragment: str) -> None:
    cli = Cli(tmp_path)
    address = cli.register("server", f"file://{tmp_path}/log")
    refused(cli("run", "server", "--plaintext", "--log", log_url), fragment)
    assert not cli.ran("server")
    assert not (tmp_path / "log").exists()
    with socket.socket() as probe:  # the coordinator never listened
        assert probe.connect_ex(("127.0.0.1", int(address.rpartition(":")[2]))) != 0


@pytest.mark.parametrize(
    ("arguments", "fragments"),
    [
        (["--log", "ftp://x/y"], ["unknown log store scheme 'ftp'"]),
        (["--log", "file://data/log"], ["must be file:///absolute/dir", "file:///data/log"]),
        (["--log", "s3://x/p"], ["malformed s3 URL"]),
        (["--app", "no_such_module:Counter"], ["there is no module 'no_such_module'"]),
        (["--app", "examples.counter.nope:Counter"], ["no module 'examples.counter.nope'"]),
        (
            ["--app", "examples.counter.app:Nope"],
            ["has no class 'Nope'", "its immortals: Client, Counter"],
        ),
        (["--app", "examples.counter.app:rpc"], ["is not an ambrosia.Immortal subclass"]),
    ],
)
def test_register_refuses_what_run_would_refuse(
    tmp_path: Path, arguments: list[str], fragments: list[str]
) -> None:
    """Checked at registration, not at the first run; nothing is registered."""
    cli = Cli(tmp_path, env={"PYTHONPATH": str(REPOSITORY_ROOT)})
    settings = {
        "--address": "127.0.0.1:7001",
        "--log": f"file://{tmp_path}/log",
        "--app": "examples.counter.app:Counter",
    }
    settings.update(zip(arguments[::2], arguments[1::2], strict=True))
    done = cli("register", "server", *[item for pair in settings.items() for item in pair])
    refused(done, *fragments)
    assert "server" not in cli("list").stdout


def test_register_skips_the_import_check_when_asked(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    log = f"file://{tmp_path}/log"
    app = "code_elsewhere.app:Worker"
    base = ["register", "worker", "--address", "127.0.0.1:7001", "--log", log, "--app", app]
    refused(cli(*base), "there is no module 'code_elsewhere'")
    done = cli(*base, "--skip-import-check")
    assert done.returncode == 0, done.stderr
    assert app in cli("list").stdout


def test_run_says_a_missing_class_does_not_exist(tmp_path: Path) -> None:
    cli = Cli(tmp_path, env={"PYTHONPATH": str(REPOSITORY_ROOT)})
    cli.register("server", f"file://{tmp_path}/log")
    done = cli("run", "server", "--plaintext", "--app", "examples.counter.app:Nope")
    refused(done, "has no class 'Nope'")
    assert "not an ambrosia.Immortal subclass" not in done.stderr
    assert not cli.ran("server")


def test_run_refuses_a_busy_address_and_releases_the_lease(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    address = cli.register("server", f"file://{tmp_path}/log")
    host, _, port = address.rpartition(":")
    with socket.socket() as squatter:
        squatter.bind((host, int(port)))
        squatter.listen()
        done = cli("run", "server", "--plaintext", "--lease-wait-s", "0")
    assert done.returncode == 2, done.stderr
    assert f"server cannot listen on {address}" in done.stderr, done.stderr
    # The failed start gave its lease back: the next start does not wait for it.
    run_until_primary_then_stop(cli, "server", "--lease-wait-s", "0")


def test_a_second_run_says_at_once_whose_lease_it_waits_for(tmp_path: Path) -> None:
    """Not 30 silent seconds: the holder's process and host, and how long it will wait.

    (``--role primary``: a second run waits for the lease; by default it is a hot
    standby instead, and says so at once, ``tests/crash/test_standby.py``.)"""
    cli = Cli(tmp_path)
    cli.register("server", f"file://{tmp_path}/log")
    first = cli.start("run", "server", "--plaintext")
    second: subprocess.Popen[str] | None = None
    try:
        assert first.stdout is not None
        _read_until(first, ": primary (replayed")
        second = cli.start(
            "run", "server", "--plaintext", "--role", "primary", "--lease-wait-s", "60"
        )
        expected = (
            f"server: waiting up to 60 s for the lease held by process {first.pid} "
            f"on host {socket.gethostname()}"
        )
        _read_until(second, expected)
        second.send_signal(signal.SIGTERM)  # a standby stops at once when asked
        assert second.wait(timeout=15) == 0
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


def _read_until(process: subprocess.Popen[str], fragment: str, liveness_s: float = 30) -> str:
    """Lines of ``process`` up to the one holding ``fragment`` (within a liveness limit)."""
    assert process.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + liveness_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if fragment in line:
            return "".join(seen)
    raise AssertionError(f"no {fragment!r} in:\n{''.join(seen)}")


@pytest.mark.emulator
def test_s3_missing_bucket_credentials_and_endpoint(
    tmp_path: Path, moto_server: MotoServer
) -> None:
    no_credentials = {
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    credentials = {**no_credentials, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "x"}
    bucket = f"missing-{uuid.uuid4().hex[:10]}"
    log_url = f"s3://{bucket}/logs"
    endpoint = {"AMBROSIA_S3_ENDPOINT_URL": moto_server.endpoint_url}

    cli = Cli(tmp_path, {**no_credentials, **endpoint})
    cli.register("server", log_url)
    refused(cli("run", "server", "--plaintext"), "no AWS credentials")

    cli = Cli(tmp_path, {**credentials, "AMBROSIA_S3_ENDPOINT_URL": closed_endpoint()})
    started_s = time.monotonic()
    refused(cli("run", "server", "--plaintext"), "cannot reach")
    assert time.monotonic() - started_s < 20

    cli = Cli(tmp_path, {**credentials, **endpoint})
    refused(cli("run", "server", "--plaintext"), f"bucket {bucket!r}", "does not exist")
    assert not cli.ran("server")
    output = run_until_primary_then_stop(cli, "server", "--create-storage")
    assert "lease taken, epoch 1" in output
    assert cli.ran("server")


@pytest.mark.emulator
def test_azblob_missing_container_credentials_and_endpoint(
    tmp_path: Path, azurite: Azurite
) -> None:
    container = f"missing-{uuid.uuid4().hex[:10]}"
    log_url = f"azblob://{container}/logs"
    cli = Cli(tmp_path, {"AZURE_STORAGE_CONNECTION_STRING": "", "AZURE_STORAGE_ACCOUNT_URL": ""})
    cli.register("server", log_url)
    refused(cli("run", "server", "--plaintext"), "no Azure Blob credentials")

    unreachable = azurite.connection_string.replace(
        f"127.0.0.1:{azurite.blob_port}", closed_endpoint().removeprefix("http://")
    )
    cli = Cli(tmp_path, {"AZURE_STORAGE_CONNECTION_STRING": unreachable})
    started_s = time.monotonic()
    refused(cli("run", "server", "--plaintext"), "cannot reach Azure Blob storage")
    assert time.monotonic() - started_s < 20

    cli = Cli(tmp_path, {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string})
    refused(cli("run", "server", "--plaintext"), f"container {container!r}", "does not exist")
    assert not cli.ran("server")
    output = run_until_primary_then_stop(
        cli, "server", "--create-storage", "--store-option", "lease_duration_s=15"
    )
    assert "lease taken, epoch 1" in output
    assert cli.ran("server")


def closed_endpoint() -> str:
    """An http endpoint on loopback where nothing listens (connections are refused)."""
    return f"http://127.0.0.1:{free_loopback_ports(1)[0]}"


# -- the transport: mutual TLS, or plain TCP chosen explicitly ---------------------------------


def test_run_refuses_to_choose_a_transport_for_the_user(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    cli.register("server", f"file://{tmp_path}/log")
    refused(cli("run", "server"), "--tls-cert", "--tls-key", "--tls-ca", "--plaintext")
    assert len(cli("run", "server").stderr.strip().splitlines()) == 1
    refused(
        cli("run", "server", "--plaintext", "--tls-cert", "x.crt"), "--plaintext and --tls-cert"
    )
    refused(cli("run", "server", "--tls-cert", "x.crt"), "missing key", "--tls-key", "--tls-ca")
    missing = tmp_path / "missing"
    refused(
        cli("run", "server", "--tls-cert", "a", "--tls-key", "b", "--tls-ca", str(missing)),
        "does not exist",
    )
    assert not cli.ran("server")


def test_plaintext_stays_on_loopback_unless_chosen_twice(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    address = ("--address", "192.0.2.7:7001")
    done = cli("register", "server", *address, "--log", f"file://{tmp_path}", "--app", APP)
    assert done.returncode == 0, done.stderr
    refused(cli("run", "server", "--plaintext"), "192.0.2.7", "--plaintext-beyond-loopback")
    refused(cli("run", "server", "--plaintext-beyond-loopback"), "only goes with --plaintext")
    # A deployment file choosing plaintext is held to the same rule.
    (tmp_path / "ambrosia.toml").write_text("[tls]\nplaintext = true\n")
    refused(cli("run", "server"), "192.0.2.7", "not a loopback address")
    assert not cli.ran("server")


def test_certs_then_two_instances_over_mutual_tls(tmp_path: Path) -> None:
    """``ambrosia certs`` end to end: its CA and certificates carry real calls."""
    from ambrosia.testing.harness import Deployment

    deployment = Deployment(tmp_path, env={"AMBROSIA_CHAIN_TOTAL": "300"}, tls=True)
    made = deployment.cli("certs", str(deployment.certs_dir), "server", "client")
    assert "created CA" in made and "client: --tls-cert" in made
    for name in ("ca.key", "server.key", "client.key"):
        assert (deployment.certs_dir / name).stat().st_mode & 0o777 == 0o600
    deployment.register("server", "ambrosia.testing.workloads:ChainServer")
    deployment.register("client", "ambrosia.testing.workloads:ChainClient")
    try:
        deployment.start("server")
        deployment.start("client")
        deployment.wait_for(
            lambda: bool((deployment.status("client") or {}).get("done")), 60, "the client"
        )
        deployment.wait_for(
            lambda: (deployment.status("server") or {}).get("count") == 300, 30, "the server"
        )
        server = deployment.status("server")
        assert server is not None and server["out_of_order"] == []
        assert "--tls-cert" in " ".join(deployment.transport_args("client"))
        assert "closing connection" not in deployment.output("server")
    finally:
        deployment.stop_all()


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += _parsers(child)
    return found


@pytest.mark.parametrize("build", [cli_module.build_parser, bench_cli._parser])
def test_help_is_plain_text_and_every_option_says_what_it_does(
    build: Callable[[], argparse.ArgumentParser],
) -> None:
    for parser in _parsers(build()):
        text = parser.format_help()
        assert "``" not in text, text  # reStructuredText belongs in docstrings
        for action in parser._actions:
            if action.option_strings and action.help != argparse.SUPPRESS:
                assert action.help, f"{parser.prog} {action.option_strings[0]} has no help"
