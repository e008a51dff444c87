"""The soak command, short: 20 SIGKILLs across a client, a relay and a server.

It runs as a user runs it (``python -m ambrosia.testing.soak``), so its exit code and its
report are what is tested; the scenario's checks are those of ``ambrosia.testing.crash``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.crash

KILLS = 20
DEADLINE_S = 600  # liveness only


def test_soak_command_short_run(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ambrosia.testing.soak",
            "--kills",
            str(KILLS),
            "--immortals",
            "3",
            "--seed",
            "20261124",
            "--directory",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    report = re.search(
        r"kills (\d+), calls checked (\d+), recoveries (\d+), .* violations 0", done.stdout
    )
    assert report is not None, done.stdout
    kills, calls_checked, recoveries = (int(value) for value in report.groups())
    assert kills == KILLS
    # Three hops of calls: the relay's and the server's chains, the client's results.
    assert calls_checked > 2 * KILLS * 100
    assert recoveries >= KILLS
