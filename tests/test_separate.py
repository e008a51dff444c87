"""``ambrosia run --separate`` and ``ambrosia coordinator`` on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from ambrosia.cli import EXIT_CONFIG, main
from ambrosia.separate import coordinator_arguments


def test_the_coordinator_child_gets_the_run_options_without_the_binding_ones() -> None:
    argv = [
        "--catalog",
        "sqlite:///tmp/c.db",
        "run",
        "server",
        "--app",
        "pkg.module:Server",
        "--plaintext",
        "--separate",
        "--receive-port=7100",
        "--send-port",
        "7101",
        "--checkpoint-log-bytes",
        "65536",
    ]
    assert coordinator_arguments(argv) == [
        "--catalog",
        "sqlite:///tmp/c.db",
        "coordinator",
        "server",
        "--plaintext",
        "--checkpoint-log-bytes",
        "65536",
    ]


def test_the_coordinator_alone_refuses_an_application(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--catalog", f"sqlite://{tmp_path / 'c.db'}", "coordinator", "x", "--app", "m:C"])
    assert code == EXIT_CONFIG
    assert "--app belongs to its binding" in capsys.readouterr().err
