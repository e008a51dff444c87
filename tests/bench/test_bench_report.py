import os
from pathlib import Path

import orjson
import pytest

from ambrosia.bench import report
from ambrosia.bench.report import (
    CostPoint,
    PingResult,
    Results,
    latency_summary,
    throughput_point,
)


def test_throughput_point_rates() -> None:
    point = throughput_point("grpc", 1000, 1000, 2.0)
    assert point.messages_per_second == 500.0
    assert point.megabytes_per_second == 0.5  # 500 * 1000 B = 5e5 B/s
    with pytest.raises(ValueError, match="positive"):
        throughput_point("grpc", 16, 1, 0.0)


def test_latency_summary_nearest_rank() -> None:
    # 1..1000 ms: the p-th percentile is the ceil(p * 1000)-th smallest sample.
    samples = [ms * 1_000_000 for ms in range(1000, 0, -1)]
    summary = latency_summary("grpc", samples)
    assert summary.count == 1000
    assert summary.p50_ms == pytest.approx(500.0)
    assert summary.p90_ms == pytest.approx(900.0)
    assert summary.p99_ms == pytest.approx(990.0)
    assert summary.p999_ms == pytest.approx(999.0)
    assert summary.mean_ms == pytest.approx(500.5)


def test_latency_summary_edges() -> None:
    one = latency_summary("x", [2_500_000])
    assert one.p50_ms == one.p999_ms == one.mean_ms == pytest.approx(2.5)
    with pytest.raises(ValueError, match="no latency samples"):
        latency_summary("x", [])


def _results() -> Results:
    return Results(
        command="throughput",
        config={"sizes": [16, 65536], "duration": 1.0},
        throughput=[
            throughput_point("ambrosia", 16, 127_000, 1.0),
            throughput_point("grpc", 16, 10_000, 1.0),
            throughput_point("ambrosia", 65536, 9_000, 1.0),
            throughput_point("grpc", 65536, 10_000, 1.0),
        ],
        ping=[latency_summary("grpc", [400_000, 500_000, 600_000])],
        cost=[
            CostPoint("serverless-azure", 16, 85.5),
            CostPoint("ambrosia-vm", 16, 0.855),
            CostPoint("serverless-azure", 65536, 14.8),
            CostPoint("ambrosia-vm", 65536, 3.58),
        ],
    )


def test_write_outputs_json_markdown_and_plots(tmp_path: Path) -> None:
    written = report.write_outputs(tmp_path / "out", _results())
    names = {path.name for path in written}
    assert names == {"results.json", "results.md", "figure5-throughput.png", "figure6-cost.png"}
    for path in written:
        assert path.stat().st_size > 0
    for png in ("figure5-throughput.png", "figure6-cost.png"):
        data = (tmp_path / "out" / png).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000

    document = orjson.loads((tmp_path / "out" / "results.json").read_bytes())
    assert document["schema_version"] == report.SCHEMA_VERSION
    assert document["complete"] is True
    assert set(document["machine"]) >= {"platform", "cpu_count", "memory_bytes"}
    assert document["machine"]["cpu_count"] >= 1
    assert document["python"]["version"]
    assert document["packages"]["grpcio"]
    assert "git_commit" in document
    assert document["config"]["duration"] == 1.0
    assert set(document["throughput"][0]) >= {
        "system",
        "size_bytes",
        "messages_per_second",
        "megabytes_per_second",
    }
    assert set(document["ping"][0]) == {
        "system",
        "count",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "p999_ms",
        "mean_ms",
    }
    assert set(document["cost"][0]) == {"design", "size_bytes", "usd_per_month_per_mb_per_s"}

    text = (tmp_path / "out" / "results.md").read_text()
    assert "| 16 B |" in text
    assert "12.70x" in text and "12.7x" in text  # ours, then the paper's
    assert "0.90x" in text  # 64 KiB: 9,000 / 10,000
    assert "paper: gRPC" in text and "61.85" in text  # Table 1 beside ours
    assert "100x" in text  # serverless-azure / ambrosia-vm at 16 B: 85.5 / 0.855


def test_load_results_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    original = _results()
    report.write_json(path, original)
    loaded = report.load_results(path)
    assert loaded.throughput == original.throughput
    assert loaded.ping == original.ping
    assert loaded.cost == original.cost
    assert loaded.command == "throughput"


def test_load_results_refuses_other_versions(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_bytes(orjson.dumps({"schema_version": 99}))
    with pytest.raises(ValueError, match="schema_version 99"):
        report.load_results(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        report.load_results(path)


def test_markdown_marks_interrupted_runs() -> None:
    results = _results()
    results.complete = False
    assert "Interrupted" in report.markdown(results)


def test_ping_markdown_labels_the_floor_and_gives_tail_ratios() -> None:
    rows = [
        PingResult("ambrosia", 10_000, 2.0, 2.2, 3.0, 25.4, 2.1),
        PingResult("grpc", 10_000, 0.4, 0.5, 0.9, 4.92, 0.45),
        PingResult("tcp", 10_000, 0.02, 0.03, 0.05, 0.302, 0.025),
    ]
    text = report.markdown(Results(command="ping", config={}, ping=rows))
    lines = text.splitlines()
    assert "| tcp (machine floor) | 10000 | 0.020 | 0.030 | 0.050 | 0.302 | 0.025 |" in lines
    assert "| ambrosia | 10000 | 2.000 |" in text  # the other systems keep their names
    # 25.4 / 2.0, 4.92 / 0.4, 0.302 / 0.02
    ratio_line = "p99.9 / p50: ambrosia 12.7x, grpc 12.3x, tcp 15.1x"
    assert ratio_line in lines
    # The ratio line sits under the table, after the paper's rows.
    assert lines.index(ratio_line) > max(
        index for index, line in enumerate(lines) if line.startswith("| paper:")
    )


def test_tcp_row_keeps_its_name_in_the_results_file(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    floor = latency_summary("tcp", [20_000, 21_000, 300_000])
    report.write_json(path, Results(command="ping", config={}, ping=[floor]))
    assert orjson.loads(path.read_bytes())["ping"][0]["system"] == "tcp"
    assert report.load_results(path).ping == [floor]


def test_peak_rss_is_kept_in_the_file_and_shown_per_process(tmp_path: Path) -> None:
    mib = 1 << 20
    results = Results(
        command="throughput",
        config={},
        throughput=[
            report.throughput_point(
                "ambrosia", 65536, 100, 1.0, {"server": 90 * mib, "client": 70 * mib}
            ),
            report.throughput_point("grpc", 65536, 50, 1.0, {"server": 40 * mib}),
        ],
    )
    report.write_json(tmp_path / "r.json", results)
    loaded = report.load_results(tmp_path / "r.json")
    assert loaded.throughput[0].peak_rss_bytes == {"server": 90 * mib, "client": 70 * mib}
    table = report.markdown(loaded)
    assert "ambrosia peak RSS MiB (server / client)" in table
    assert "| 90 / 70 |" in table and "| 40 / - |" in table
    # Files from before it was recorded load, and their tables have no such column.
    old = orjson.loads((tmp_path / "r.json").read_bytes())
    for row in old["throughput"]:
        del row["peak_rss_bytes"]
    (tmp_path / "old.json").write_bytes(orjson.dumps(old))
    assert "peak RSS" not in report.markdown(report.load_results(tmp_path / "old.json"))
    old["throughput"][0]["peak_rss_bytes"] = {"server": "a lot"}
    (tmp_path / "bad.json").write_bytes(orjson.dumps(old))
    with pytest.raises(ValueError, match="peak_rss_bytes must map"):
        report.load_results(tmp_path / "bad.json")


def test_process_peak_rss_reads_a_live_process() -> None:
    peak = report.process_peak_rss(os.getpid())
    assert peak is not None and peak > 1 << 20
    assert report.peak_rss_of({"me": os.getpid(), "gone": None}).keys() == {"me"}
