"""Example tests import the example apps (``examples.*``) and run them as processes.

The examples are not part of the installed package, so the repository root goes on the
import path here, and into PYTHONPATH for the processes the harness starts (which may
run from any working directory).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPOSITORY_ROOT = str(Path(__file__).resolve().parents[2])

if REPOSITORY_ROOT not in sys.path:
    sys.path.insert(0, REPOSITORY_ROOT)


@pytest.fixture
def example_env() -> dict[str, str]:
    """Environment for example processes: the repository root importable."""
    path = os.pathsep.join(p for p in (REPOSITORY_ROOT, os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path}
