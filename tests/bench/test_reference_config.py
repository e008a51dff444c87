"""``ambrosia-bench run bench_configs/reference.toml``: every reference folder, then the headline.

The shipped config is parsed into its steps; a copy of it with tiny durations and two
sizes runs end to end (real ambrosia and gRPC processes) into a temporary folder, and
rewrites a copy of results/README.md's headline from what it measured.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest

from ambrosia import eventloop
from ambrosia.bench import cli
from ambrosia.bench.headline import BEGIN_MARKER, headline
from ambrosia.bench.peers import summary as peers_summary
from ambrosia.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "bench_configs" / "reference.toml"
# The documented bound (results/README.md) on each process streaming 64 KiB messages.
STREAMING_64K_RSS_BYTES_MAX = 256 << 20


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def _toml(document: dict[str, Any]) -> str:
    lines = [f"{key} = {_toml_value(value)}" for key, value in document.items() if key != "steps"]
    for step in document.get("steps", []):
        lines += ["", "[[steps]]", *(f"{key} = {_toml_value(v)}" for key, v in step.items())]
    return "\n".join(lines) + "\n"


def test_the_reference_config_makes_every_reference_folder(tmp_path: Path) -> None:
    suite = cli.load_suite(REFERENCE)
    assert suite.out is not None and suite.out.resolve() == ROOT / "results" / "reference"
    assert suite.headline is not None
    assert suite.headline.resolve() == ROOT / "results" / "README.md"
    committed = {path.name for path in (ROOT / "results" / "reference").iterdir()}
    assert (
        {step.name for step in suite.steps} == committed == {"throughput", "ping", "cost", "peers"}
    )
    parser = cli._parser()
    commands = {}
    for step in suite.steps:
        options = parser.parse_args(step.arguments)
        assert options.out.resolve() == ROOT / "results" / "reference" / step.name
        commands[step.name] = options
    assert commands["throughput"].sizes[0] == 16 and commands["throughput"].sizes[-1] == 65536
    assert commands["throughput"].systems == ["ambrosia", "grpc", "disk"]
    assert commands["throughput"].persist is True
    assert commands["ping"].systems == ["ambrosia", "grpc", "tcp", "cpu", "disk"]
    assert commands["peers"].rounds == 3 and "temporal" in commands["peers"].systems
    # Cost prices this run's throughput, not a fresh measurement.
    assert commands["cost"].results.resolve() == (
        ROOT / "results" / "reference" / "throughput" / "results.json"
    )
    # Elsewhere, every step follows the folder.
    moved = cli.load_suite(REFERENCE, tmp_path)
    assert [step.name for step in moved.steps] == [step.name for step in suite.steps]
    assert all(str(tmp_path / step.name) in step.arguments for step in moved.steps)
    assert str(tmp_path / "throughput" / "results.json") in moved.steps[2].arguments


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('out = "x"\n', "steps must be"),
        ("steps = []\n", "steps must be"),
        ('[[steps]]\nname = "a"\ncommand = "ping"\nbogus = 1\n', "step 1: unknown keys"),
        ('[[steps]]\ncommand = "ping"\n', "name must be"),
        (
            '[[steps]]\nname = "a"\ncommand = "ping"\n[[steps]]\nname = "a"\ncommand = "ping"\n',
            "step 2: name must be a new folder",
        ),
        ('[[steps]]\nname = "c"\ncommand = "cost"\nresults_from = "t"\n', "names no earlier"),
        (
            '[[steps]]\nname = "a"\ncommand = "ping"\n[[steps]]\nname = "b"\ncommand = "ping"\n'
            'results_from = "a"\n',
            "results_from is for a cost step",
        ),
        ('[[steps]]\nname = "a"\ncommand = "fly"\n', "command must be"),
    ],
)
def test_a_bad_config_with_steps_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        cli.load_suite(config)


def test_one_command_readers_refuse_a_config_with_steps() -> None:
    with pytest.raises(ConfigError, match="has steps"):
        cli.config_arguments(REFERENCE)


def test_the_reference_command_runs_end_to_end_with_tiny_durations(tmp_path: Path) -> None:
    document = tomllib.loads(REFERENCE.read_text())
    document["out"] = "reference"
    document["headline"] = "README.md"
    for step in document["steps"]:
        if step["command"] == "throughput":
            step.update(sizes=[16, 65536], duration_s=0.3, warmup_s=0.1)
        elif step["command"] == "ping":
            step.update(count=40, warmup=5)
        elif step["command"] == "peers":
            step.update(
                systems=["ambrosia", "dbos-sqlite"], calls=20, warmup=2, in_flight=4, rounds=1
            )
    config = tmp_path / "reference.toml"
    config.write_text(_toml(document))
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "results" / "README.md", readme)
    before = readme.read_text()

    # The config's own folder and headline file, as the shipped config is run.
    assert cli.main(["run", str(config)]) == 0

    out = tmp_path / "reference"
    assert {path.name for path in out.iterdir()} == {"throughput", "ping", "cost", "peers"}
    throughput = orjson.loads((out / "throughput" / "results.json").read_bytes())
    assert throughput["config"]["experiment"]["step"] == "throughput"
    assert throughput["config"]["event_loop"] == eventloop.chosen_loop()
    assert "uvloop" in throughput["packages"]
    rows = {(row["system"], row["size_bytes"]): row for row in throughput["throughput"]}
    assert set(rows) == {(s, n) for s in ("ambrosia", "grpc", "disk") for n in (16, 65536)}
    for (system, size), row in rows.items():
        assert row["messages_per_second"] > 0, (system, size)
        if system == "disk":
            continue  # measured in the benchmark's own process
        peaks = row["peak_rss_bytes"]
        assert set(peaks) == {"server", "client"}, (system, size)
        assert all(peak > 1 << 20 for peak in peaks.values()), (system, size, peaks)
    for role, peak in rows[("ambrosia", 65536)]["peak_rss_bytes"].items():
        assert peak < STREAMING_64K_RSS_BYTES_MAX, f"ambrosia {role} at 64 KiB: {peak} bytes"
    table = (out / "throughput" / "results.md").read_text()
    assert "ambrosia peak RSS MiB (server / client)" in table and "ambrosia/disk" in table
    assert f"ambrosia on the {eventloop.chosen_loop()} event loop." in table
    ping = orjson.loads((out / "ping" / "results.json").read_bytes())
    assert {row["system"] for row in ping["ping"]} == {"ambrosia", "grpc", "tcp", "cpu", "disk"}
    cost = orjson.loads((out / "cost" / "results.json").read_bytes())
    assert cost["config"]["results"] == str(out / "throughput" / "results.json")
    assert {row["size_bytes"] for row in cost["cost"]} == {16, 65536}

    peers = orjson.loads((out / "peers" / "results.json").read_bytes())
    assert {(row["system"], row["mode"]) for row in peers["peers"]} == {
        (system, mode)
        for system in ("ambrosia", "dbos-sqlite")
        for mode in ("sequential", "in-flight")
    }

    after = readme.read_text()
    assert after != before and BEGIN_MARKER in after
    assert headline(out) in after and peers_summary(out / "peers") in after
    reference = ROOT / "results" / "reference"
    assert after.replace(headline(out), "").replace(peers_summary(out / "peers"), "") == (
        before.replace(headline(reference), "").replace(peers_summary(reference / "peers"), "")
    )


def test_a_run_into_another_folder_leaves_the_configs_readme_alone(tmp_path: Path) -> None:
    config = tmp_path / "suite.toml"
    config.write_text(
        'out = "mine"\nheadline = "README.md"\n\n[[steps]]\nname = "cost"\ncommand = "cost"\n'
        f'results = "{ROOT / "results" / "reference" / "throughput" / "results.json"}"\n'
    )
    readme = tmp_path / "README.md"
    readme.write_text("untouched\n")
    assert cli.main(["run", str(config), "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "cost" / "results.json").exists()
    assert not (tmp_path / "mine").exists()
    assert readme.read_text() == "untouched\n"
