"""`ambrosia-bench failover`, end to end: real processes, a real SIGKILL, moto started by it."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from ambrosia.bench import cli


def test_emulator_needs_a_cloud_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["failover", "--emulator", "--log", f"file://{tmp_path}/log", "--kills", "1"]
    assert cli.main([*arguments, "--out", str(tmp_path / "out")]) == 2
    assert "--emulator needs an s3:// or azblob:// --log" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_failover_on_s3_starts_its_own_moto(tmp_path: Path) -> None:
    pytest.importorskip("moto.server")
    out = tmp_path / "out"
    arguments = [
        "failover",
        "--log",
        "s3://ambrosia-failover-bench/run",
        "--emulator",
        "--kills",
        "1",
        "--standbys",
        "1",
        "--interval-s",
        "0.2",
        "--warmup-s",
        "0.5",
        "--run-option=--store-option",
        "--run-option=lease_duration_s=2",
        "--out",
        str(out),
    ]
    assert cli.main(arguments) == 0
    document = orjson.loads((out / "failover.json").read_bytes())
    (summary,) = document["failover"]
    assert summary["log"] == "s3://ambrosia-failover-bench/run"
    assert summary["kills"] == 1
    # A takeover on s3 waits out the 2 s lease; generous, it only shows one happened.
    assert 0 < summary["max_s"] < 60
    assert (out / "failover.md").exists() and (out / "failover.png").exists()
