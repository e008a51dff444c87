"""The headline table of results/README.md is the one its committed JSON gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from ambrosia.bench.headline import BEGIN_MARKER, END_MARKER, headline, replace_block

ROOT = Path(__file__).resolve().parents[2]


def test_committed_headline_matches_the_committed_results() -> None:
    readme = (ROOT / "results" / "README.md").read_text()
    expected = replace_block(readme, headline(ROOT / "results" / "reference"))
    assert readme == expected, (
        "results/README.md's headline is stale: run "
        "python -m ambrosia.bench.headline results/reference --write results/README.md"
    )


def test_a_stale_figure_is_noticed() -> None:
    readme = (ROOT / "results" / "README.md").read_text()
    table = headline(ROOT / "results" / "reference")
    tampered = readme.replace(table.splitlines()[2], "| 16 B fork calls/s | 1 | 1 | 1.0x | 12.7x |")
    assert tampered != readme
    assert replace_block(tampered, table) == readme


def test_missing_markers_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="markers"):
        replace_block("no block here", "| table |\n")
    assert BEGIN_MARKER != END_MARKER
