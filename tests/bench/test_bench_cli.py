import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from ambrosia.bench import cli, report
from ambrosia.bench.report import Results, throughput_point

CONFIGS = Path(__file__).resolve().parents[2] / "bench_configs"


def _synthetic_results(path: Path) -> None:
    report.write_json(
        path,
        Results(
            command="throughput",
            config={},
            throughput=[
                throughput_point("grpc", 16, 20_625, 1.0),  # 0.33 MB/s
                throughput_point("ambrosia", 16, 312_500, 1.0),  # 5 MB/s
                throughput_point("grpc", 1024, 19_531, 1.0),
            ],
        ),
    )


def test_cost_from_results_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _synthetic_results(tmp_path / "in.json")
    status = cli.main(
        [
            "cost",
            "--results",
            str(tmp_path / "in.json"),
            "--out",
            str(tmp_path / "out"),
            "--json",
            str(tmp_path / "copy.json"),
        ]
    )
    assert status == 0
    document = orjson.loads((tmp_path / "out" / "results.json").read_bytes())
    rows = {
        (row["design"], row["size_bytes"]): row["usd_per_month_per_mb_per_s"]
        for row in document["cost"]
    }
    # Hand-computed in test_cost.py for the same rates.
    assert rows[("ambrosia-vm", 16)] == pytest.approx(34.0691)
    assert rows[("grpc-vm", 16)] == pytest.approx(514.8544)
    assert rows[("serverless-azure", 16)] == pytest.approx(85.575206640625)
    assert ("serverless-aws", 1024) in rows and ("ambrosia-vm", 1024) not in rows
    assert (tmp_path / "out" / "figure6-cost.png").stat().st_size > 0
    assert (tmp_path / "copy.json").exists()
    assert "USD per month per MB/s" in capsys.readouterr().out


def test_throughput_grpc_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(
        [
            "throughput",
            "--systems",
            "grpc",
            "--sizes",
            "16",
            "--duration",
            "0.5",
            "--warmup",
            "0.1",
            "--out",
            str(tmp_path),
        ]
    )
    assert status == 0
    document = orjson.loads((tmp_path / "results.json").read_bytes())
    assert document["complete"] is True
    assert document["config"]["sizes"] == [16]
    [row] = document["throughput"]
    assert row["system"] == "grpc" and row["size_bytes"] == 16
    assert row["messages_per_second"] > 0
    assert (tmp_path / "figure5-throughput.png").stat().st_size > 0
    assert "| 16 B |" in capsys.readouterr().out


def test_run_config_file(tmp_path: Path) -> None:
    _synthetic_results(tmp_path / "in.json")
    config = tmp_path / "exp.toml"
    config.write_text(
        'command = "cost"\nresults = "in.json"\n'
        f'prices = ["{CONFIGS / "prices-azure.toml"}"]\ningest_mb_per_s = 50\n'
    )
    assert cli.main(["run", str(config), "--out", str(tmp_path / "out")]) == 0
    document = orjson.loads((tmp_path / "out" / "results.json").read_bytes())
    assert {row["design"] for row in document["cost"]} == {"serverless-azure"}
    assert document["config"]["experiment"]["config"] == str(config)


@pytest.mark.parametrize("name", ["figure5.toml", "table1.toml", "figure6.toml"])
def test_shipped_configs_parse(name: str) -> None:
    arguments = cli.config_arguments(CONFIGS / name)
    options = cli._parser().parse_args(arguments)
    assert options.command in {"throughput", "ping", "cost"}
    # Table 1 also measures the machine's floors; the streaming figures cannot.
    floor = ["tcp", "cpu", "disk"] if options.command == "ping" else []
    assert options.systems == ["ambrosia", "grpc", *floor]


def test_ping_tcp_floor_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["ping", "--systems", "tcp", "--count", "200", "--warmup", "20"]
    assert cli.main([*arguments, "--out", str(tmp_path)]) == 0
    document = orjson.loads((tmp_path / "results.json").read_bytes())
    assert document["complete"] is True
    [row] = document["ping"]
    assert row["system"] == "tcp" and row["count"] == 200
    assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["p999_ms"]
    text = (tmp_path / "results.md").read_text()
    assert "| tcp (machine floor) | 200 |" in text
    assert f"p99.9 / p50: tcp {row['p999_ms'] / row['p50_ms']:.1f}x" in text
    assert "tcp (machine floor)" in capsys.readouterr().out


def test_ping_cpu_floor_end_to_end(tmp_path: Path) -> None:
    arguments = ["ping", "--systems", "cpu", "--count", "300", "--warmup", "20"]
    assert cli.main([*arguments, "--out", str(tmp_path)]) == 0
    [row] = orjson.loads((tmp_path / "results.json").read_bytes())["ping"]
    assert row["system"] == "cpu" and row["count"] == 300
    assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["p999_ms"]
    text = (tmp_path / "results.md").read_text()
    assert "| cpu (machine floor) | 300 |" in text
    assert f"p99.9 / p50: cpu {row['p999_ms'] / row['p50_ms']:.1f}x" in text


def test_ping_disk_floor_end_to_end(tmp_path: Path) -> None:
    arguments = ["ping", "--systems", "disk", "--count", "200", "--warmup", "10"]
    assert cli.main([*arguments, "--out", str(tmp_path)]) == 0
    [row] = orjson.loads((tmp_path / "results.json").read_bytes())["ping"]
    assert row["system"] == "disk" and row["count"] == 200
    assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["p999_ms"]
    text = (tmp_path / "results.md").read_text()
    assert "| disk (machine floor) | 200 |" in text
    # The floor's scratch file is gone with the run.
    assert not [path for path in tmp_path.rglob("disk-floor-*") if path.is_file()]


def test_ping_measures_the_floors_by_default_and_streaming_does_not() -> None:
    parser = cli._parser()
    assert parser.parse_args(["ping"]).systems == ["ambrosia", "grpc", "tcp", "cpu", "disk"]
    for command in ("throughput", "cost"):
        assert parser.parse_args([command]).systems == ["ambrosia", "grpc"]


@pytest.mark.parametrize("command", ["throughput", "cost"])
def test_tcp_outside_ping_is_refused(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--systems", "grpc,tcp", "--sizes", "16", "--out", str(tmp_path)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --systems: tcp: ping floors only" in err
    assert "Traceback" not in err
    assert not (tmp_path / "results.json").exists()


def test_tcp_outside_ping_is_refused_from_a_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "exp.toml"
    config.write_text('command = "throughput"\nsystems = ["ambrosia", "tcp"]\n')
    with pytest.raises(SystemExit) as exited:
        cli.main(["run", str(config), "--out", str(tmp_path / "out")])
    assert exited.value.code == 2
    assert "tcp: ping floors only" in capsys.readouterr().err


def test_bad_config_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('command = "throughput"\nsizez = "16"\n')
    assert cli.main(["run", str(config)]) == 2
    assert "unknown keys ['sizez']" in capsys.readouterr().err


def test_missing_ambrosia_side_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # None in sys.modules makes the import fail exactly as if the module were absent.
    monkeypatch.setitem(sys.modules, "ambrosia.bench.ambrosia_side", None)
    status = cli.main(
        ["throughput", "--systems", "grpc,ambrosia", "--sizes", "16", "--out", str(tmp_path)]
    )
    assert status == 2
    assert "--systems grpc" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()  # failed before measuring anything


def _children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(child) for child in text.split()}


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


# Eight points of 1 s each: interrupted once the first finished, seven are still to come.
INTERRUPTED_SIZES = ("16", "32", "64", "128", "256", "512", "1024", "2048")
# A liveness limit: the first point's processes start and finish within a few seconds.
POINT_LIVENESS_S = 60.0


def _sigint_as_from_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.skipif(not Path("/proc").exists(), reason="needs /proc to find child processes")
def test_ctrl_c_stops_children_and_writes_what_finished(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ambrosia.bench.cli",
            "throughput",
            "--systems",
            "grpc",
            "--sizes",
            ",".join(INTERRUPTED_SIZES),
            "--duration",
            "1",
            "--warmup",
            "0",
            "--out",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(cli.__file__).resolve().parents[2])},
        # As from a terminal: a test run started in the background by a shell inherits
        # SIGINT ignored, and Python then never turns it into KeyboardInterrupt.
        preexec_fn=_sigint_as_from_a_terminal,
    )

    def wait_for_children(condition: Callable[[set[int]], bool], what: str) -> set[int]:
        deadline = time.monotonic() + POINT_LIVENESS_S
        while not condition(current := _children(process.pid)):
            assert process.poll() is None, f"the run ended before {what}"
            assert time.monotonic() < deadline, f"no {what} within {POINT_LIVENESS_S} s"
            time.sleep(0.05)
        return current

    try:
        # The first point's gRPC server and client; a child that is neither belongs to
        # the next point, so the first one finished: interrupt then, not after a guess.
        first = wait_for_children(lambda now: len(now) >= 2, "gRPC server and client")
        second = wait_for_children(lambda now: bool(now - first), "process of the next point")
        children = first | second
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=POINT_LIVENESS_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert not [pid for pid in children if _running(pid)]
    document = orjson.loads((tmp_path / "results.json").read_bytes())
    assert document["complete"] is False
    assert 1 <= len(document["throughput"]) < len(INTERRUPTED_SIZES)
    assert b"Interrupted" in out


NO_AWS_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "",
    "AWS_SECRET_ACCESS_KEY": "",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["throughput", "--log", "ftp://x/y"], "unknown log store scheme 'ftp'"),
        (["throughput", "--log", "file://data/log"], "must be file:///absolute/dir"),
        (["throughput", "--log", "s3://nobucket/x"], "no AWS credentials"),
        (["ping", "--log", "ftp://x/y"], "unknown log store scheme 'ftp'"),
        (["ping", "--count", "0"], "--count: must be at least 1"),
        (["ping", "--warmup", "-1"], "--warmup: must not be negative"),
    ],
)
def test_a_wrong_setting_is_one_line_before_anything_starts(
    tmp_path: Path, arguments: list[str], fragment: str
) -> None:
    """Exit 2, one line on stderr, no child started (no traceback), no folder left."""
    environment = {
        **os.environ,
        **NO_AWS_CREDENTIALS,
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
    }
    environment.pop("AMBROSIA_S3_ENDPOINT_URL", None)
    sizes = ["--sizes", "16"] if arguments[0] == "throughput" else []
    done = subprocess.run(
        [sys.executable, "-m", "ambrosia.bench.cli", *arguments, *sizes, "--out", "out"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 or lines[0].startswith("usage:"), done.stderr
    assert fragment in lines[-1], done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "results").exists()


def test_both_systems_one_line_per_finished_point_and_one_spelling_of_sizes(
    tmp_path: Path,
) -> None:
    """Not on a terminal: a line per finished point, with the count and the time left."""
    arguments = ["throughput", "--sizes", "1K", "--duration", "0.3", "--warmup", "0"]
    done = subprocess.run(
        [sys.executable, "-m", "ambrosia.bench.cli", *arguments, "--out", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    points = [line for line in done.stderr.splitlines() if line.startswith("[")]
    labels = [line.split(":")[0] for line in points]
    assert labels == ["[1/2] ambrosia 1 KiB", "[2/2] grpc 1 KiB"], done.stderr
    assert all(re.search(r"calls/s, .* MB/s \(\d:\d\d:\d\d taken, about ", p) for p in points)
    assert points[-1].endswith("about 0:00:00 left)"), points
    assert "1024 B" not in done.stdout + done.stderr
    assert "| 1 KiB |" in done.stdout


def test_points_on_a_log_url_each_get_a_log_of_their_own(tmp_path: Path) -> None:
    """Two sizes on one --log: the second must not recover the first and send its size."""
    shared = tmp_path / "shared"
    arguments = ["throughput", "--systems", "ambrosia", "--sizes", "16,1K"]
    arguments += ["--duration", "0.3", "--warmup", "0", "--log", f"file://{shared}"]
    done = subprocess.run(
        [sys.executable, "-m", "ambrosia.bench.cli", *arguments, "--out", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    document = orjson.loads((tmp_path / "out" / "results.json").read_bytes())
    assert [row["size_bytes"] for row in document["throughput"]] == [16, 1024]
    points = sorted(path.name.rsplit("-", 1)[0] for path in shared.iterdir() if path.is_dir())
    assert points[-2:] == ["throughput-1024", "throughput-16"], points


def test_deployment_cost_on_an_aws_sheet(capsys: pytest.CaptureFixture[str]) -> None:
    sheet = str(CONFIGS / "prices-eks.toml")
    arguments = ["deployment-cost", "--prices", sheet, "--log-mb-per-s", "0"]
    assert cli.main([*arguments, "--log-puts-per-s", "0", "--no-cluster", "--standbys", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("price sheet: prices-eks.toml (AWS us-east-1")
    assert "EKS control plane: 0.00 USD/month" in lines
    # Nodes and disks only: 2 * 0.096 * 730 + 60 GB * 0.08.
    assert (
        lines[-1] == f"total: {2 * 0.096 * 730 + 60 * 0.08 + 730 * 3600 * 0.125e-6:.2f} USD/month"
    )
    # The AWS options need an AWS sheet; the default sheet is the VM one.
    assert cli.main(["deployment-cost", "--log-puts-per-s", "5"]) == 2
    assert "--log-puts-per-s: only with --prices of a deployment-aws sheet" in (
        capsys.readouterr().err
    )
    assert cli.main(["deployment-cost"]) == 0
    assert capsys.readouterr().out.startswith("price sheet: prices-vm.toml")


def test_disk_is_a_floor_of_streaming_when_asked_and_of_ping_by_default() -> None:
    # Streaming: durable 8 MiB page writes alone; ping: the two small O_DSYNC writes a
    # durable round trip waits for. Throughput measures it only when asked (it writes
    # gigabytes); ping always (its floor explains ambrosia's median).
    parser = cli._parser()
    assert parser.parse_args(["throughput"]).systems == ["ambrosia", "grpc"]
    assert parser.parse_args(["throughput", "--systems", "disk"]).systems == ["disk"]
    assert parser.parse_args(["ping", "--systems", "ambrosia,disk"]).systems == [
        "ambrosia",
        "disk",
    ]
    assert "disk" in cli.STREAMING_SYSTEMS and "disk" in cli.PING_SYSTEMS
