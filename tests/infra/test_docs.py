"""The deployment docs quote commands, not typed figures: run them and compare.

Every ``$ ambrosia-bench deployment-cost ...`` in a ``console`` block of the deployment
docs is run (in the repository root, where its price sheets are), and the block must
show exactly what it prints. A price sheet that changes fails here until the docs are
regenerated.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from tests.infra.tools import REPOSITORY_ROOT

DOCS = ["deploy-azure.md", "deploy-aws.md", "kubernetes.md"]
_BLOCK = re.compile(r"```console\n\$ (ambrosia-bench deployment-cost[^\n]*)\n(.*?)```", re.S)


@pytest.mark.parametrize("name", DOCS)
def test_cost_figures_are_what_the_command_prints(name: str) -> None:
    text = (REPOSITORY_ROOT / "docs" / name).read_text()
    blocks = _BLOCK.findall(text)
    assert blocks, f"docs/{name} shows no `ambrosia-bench deployment-cost` run"
    for command, shown in blocks:
        arguments = shlex.split(command)[1:]
        done = subprocess.run(
            [sys.executable, "-m", "ambrosia.bench.cli", *arguments],
            cwd=REPOSITORY_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert shown == done.stdout, f"docs/{name}: `{command}` now prints:\n{done.stdout}"
