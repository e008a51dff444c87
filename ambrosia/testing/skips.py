"""Skipped tests said loudly: a missing requirement skips locally and fails in CI.

A skipped test looks like a pass in a summary line ("312 passed, 9 skipped"), and an
emulator that did not start skips every test that needs it. Two rules against that:

- ``skip_unless_ci(reason)``: what a test needs is not there (an emulator that failed to
  start, the shared protocol vectors). Locally the test is skipped with ``reason``; when
  the ``CI`` environment variable is set (to anything but empty) it fails with it,
  because in CI nothing that can run may be skipped.
- ``pytest_terminal_summary`` (this module is a pytest plugin: the test suite's
  ``conftest.py`` imports the hook; ``pytest -p ambrosia.testing.skips`` loads it
  elsewhere): every run ends with a section that counts the skipped tests and lists
  each with its reason, grouped by reason, so the emulator's error is read, not missed.

pytest is imported here at the top: this module is loaded by pytest only.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import NoReturn

import pytest

__all__ = [
    "CI_ENVIRONMENT_VARIABLE",
    "in_ci",
    "pytest_terminal_summary",
    "skip_reason",
    "skip_unless_ci",
]

CI_ENVIRONMENT_VARIABLE = "CI"
# A reason longer than this (an emulator's log tail) is cut in the summary, not in the test.
_reason_chars_max = 2000


def in_ci() -> bool:
    return bool(os.environ.get(CI_ENVIRONMENT_VARIABLE))


def skip_unless_ci(reason: str) -> NoReturn:
    """Skip the calling test (or fixture) with ``reason``; in CI, fail it with ``reason``."""
    if in_ci():
        pytest.fail(f"required in CI ({CI_ENVIRONMENT_VARIABLE} is set): {reason}")
    pytest.skip(reason)


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The reason a skipped report carries, without pytest's "Skipped: " prefix."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
    else:
        reason = str(longrepr)
    return reason.removeprefix("Skipped: ")


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    by_reason: dict[str, list[str]] = defaultdict(list)
    for report in skipped:
        by_reason[skip_reason(report)].append(report.nodeid)
    count = sum(len(nodes) for nodes in by_reason.values())
    terminalreporter.section(
        f"{count} SKIPPED TEST(S): NOT RUN, NOT PASSED", sep="!", yellow=True, bold=True
    )
    for reason, nodes in sorted(by_reason.items(), key=lambda item: (-len(item[1]), item[0])):
        shown = reason if len(reason) <= _reason_chars_max else reason[:_reason_chars_max] + "…"
        terminalreporter.write_line(f"{len(nodes)} skipped because: {shown}", yellow=True)
        for node in sorted(nodes):
            terminalreporter.write_line(f"    {node}")
    if not in_ci():
        terminalreporter.write_line(
            f"(with {CI_ENVIRONMENT_VARIABLE}=1 a missing emulator or missing vectors fail "
            "instead)",
        )
