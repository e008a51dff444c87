"""The build backend: setuptools' own, plus mypy when the compiled build is asked for.

``AMBROSIA_MYPYC=1 pip install .`` (or ``-e .``) compiles the hot modules listed in
``setup.py`` with mypyc, which comes with mypy; this backend adds mypy to the build's
requirements only then, so the default (pure Python) build needs nothing but setuptools.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403 - the backend's other hooks, unchanged

MYPYC_REQUIREMENT = "mypy==2.4.1"


REQUIREMENTS_PHASE = "AMBROSIA_BUILD_REQUIREMENTS_PHASE"


def _requires(hook: Callable[[dict[str, Any] | None], list[str]], settings: Any) -> list[str]:
    # setuptools runs setup.py to answer; mypy is not installed yet at that point, so
    # setup.py is told to leave the extensions out (see setup.py).
    os.environ[REQUIREMENTS_PHASE] = "1"
    try:
        requirements = list(hook(settings))
    finally:
        del os.environ[REQUIREMENTS_PHASE]
    if os.environ.get("AMBROSIA_MYPYC") == "1":
        requirements.append(MYPYC_REQUIREMENT)
    return requirements


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    return _requires(_setuptools.get_requires_for_build_wheel, config_settings)


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    return _requires(_setuptools.get_requires_for_build_editable, config_settings)
