"""The skip report and the CI rule, run on a tiny test file in a pytest subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ambrosia.testing.skips import CI_ENVIRONMENT_VARIABLE

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]

TINY_SUITE = """
import pytest

from ambrosia.testing.emulators import EmulatorUnavailableError, start_or_skip
from ambrosia.testing.skips import skip_unless_ci


@pytest.fixture
def broken_emulator() -> object:
    def start() -> object:
        raise EmulatorUnavailableError("azurite exited with code 1 before listening: EADDRINUSE")

    return start_or_skip(start)


def test_needs_the_emulator(broken_emulator: object) -> None:
    raise AssertionError("never runs without its emulator")


def test_needs_the_vectors() -> None:
    skip_unless_ci("protocol test vectors not found at /nowhere")


@pytest.mark.skipif(True, reason="no /proc here")
def test_marked() -> None:
    raise AssertionError("never runs")


def test_runs() -> None:
    pass
"""


def run_pytest(directory: Path, *, ci: bool, source: str = TINY_SUITE) -> tuple[int, str]:
    (directory / "test_tiny.py").write_text(source)
    env = {key: value for key, value in os.environ.items() if key != CI_ENVIRONMENT_VARIABLE}
    if ci:
        env[CI_ENVIRONMENT_VARIABLE] = "1"
    env["PYTHONPATH"] = str(REPOSITORY_ROOT)
    completed = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "test_tiny.py"),
            *("-p", "ambrosia.testing.skips", "-p", "no:cacheprovider"),
        ],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,  # a liveness limit: the run takes about a second
    )
    return completed.returncode, completed.stdout + completed.stderr


def section(output: str) -> list[str]:
    """The lines of the skip report, from its banner to the final summary line."""
    lines = output.splitlines()
    [start] = [index for index, line in enumerate(lines) if "SKIPPED TEST(S)" in line]
    after = range(start + 1, len(lines))
    end = next(index for index in after if re.search(r"^=| in [\d.]+s\b", lines[index]))
    return lines[start:end]


def test_a_local_run_lists_every_skip_with_its_reason(tmp_path: Path) -> None:
    code, output = run_pytest(tmp_path, ci=False)
    assert code == 0, output
    assert "1 passed, 3 skipped" in output
    report = "\n".join(section(output))
    assert "3 SKIPPED TEST(S): NOT RUN, NOT PASSED" in report, output
    # Each reason once, counted, with the tests it skipped; the emulator's own error kept.
    assert (
        "1 skipped because: emulator unavailable: azurite exited with code 1 before "
        "listening: EADDRINUSE\n    test_tiny.py::test_needs_the_emulator"
    ) in report, report
    assert (
        "1 skipped because: protocol test vectors not found at /nowhere\n"
        "    test_tiny.py::test_needs_the_vectors"
    ) in report, report
    assert "1 skipped because: no /proc here\n    test_tiny.py::test_marked" in report, report
    assert "test_runs" not in report


def test_ci_fails_what_a_local_run_skips(tmp_path: Path) -> None:
    code, output = run_pytest(tmp_path, ci=True)
    assert code == 1, output
    # The emulator fixture fails (an error), the vectors test fails, the marked one skips.
    assert "1 failed, 1 passed, 1 skipped, 1 error" in output, output
    assert "required in CI (CI is set): emulator unavailable: azurite exited" in output
    assert "required in CI (CI is set): protocol test vectors not found" in output
    # A skip CI allows (a platform without /proc) is still listed.
    assert "1 skipped because: no /proc here" in "\n".join(section(output))


@pytest.mark.parametrize("ci", [False, True])
def test_a_run_without_skips_prints_no_report(tmp_path: Path, ci: bool) -> None:
    code, output = run_pytest(tmp_path, ci=ci, source="def test_runs() -> None:\n    pass\n")
    assert code == 0, output
    assert "SKIPPED" not in output
