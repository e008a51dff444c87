"""Optional compiled build of the hot modules (mypyc); everything else is in pyproject.toml.

By default the package is pure Python. With ``AMBROSIA_MYPYC=1`` in the environment,
``pip install .`` (or ``pip install -e .``) compiles the modules below with mypyc, which
comes with mypy (the build backend in ``build_backend/`` adds it to the build's
requirements then), using the machine's C compiler and Python headers. The pure-Python
sources stay in the package and are the fallback: remove the compiled ``.so`` files (or
install without the variable) and the same modules run interpreted.

What is compiled, and why these: each runs once per call on the path of a small call
(``python -m ambrosia.bench.hotpath`` measures that share). Not compiled:
``binding/immortal.py`` (applications subclass ``Immortal``, and compiled classes cannot
be subclassed by interpreted ones); ``binding/dispatcher.py`` (it compiles and passes the
tests, but measured no clear gain: about 6% fewer instructions a call under callgrind,
and wall-clock rounds within the noise, since its loop mostly calls the application's
interpreted handlers; compiled, it would also lose the watchdog's naming of a stuck call,
which reads the interpreted ``dispatch`` frame); the coordinator (asyncio protocols and
tasks), the page format, frames and batch checks (per page or per batch, so little to
gain; compiled code also checks argument types at run time, and ``log/page.py``
annotates ``bytes`` where callers pass ``bytearray``); ``wire/messages.py`` (its frozen
dataclasses with ``ClassVar`` fields fail at import when compiled).
"""

from __future__ import annotations

import os

from setuptools import setup

COMPILED_MODULES = [
    "ambrosia/binding/bound.py",
    "ambrosia/binding/codec.py",
    "ambrosia/protocol/outputs.py",
    "ambrosia/wire/varint.py",
]


def _extensions() -> list[object]:
    if os.environ.get("AMBROSIA_MYPYC") != "1":
        return []
    if os.environ.get("AMBROSIA_BUILD_REQUIREMENTS_PHASE") == "1":
        return []  # the backend is only asking what to install; mypy comes next
    try:
        from mypyc.build import mypycify
    except ImportError as error:
        raise SystemExit(
            "AMBROSIA_MYPYC=1 needs mypyc, which comes with mypy: install mypy into the "
            "build environment (it is in the dev extra), or build with build isolation"
        ) from error

    return list(mypycify(COMPILED_MODULES, opt_level="3"))


setup(ext_modules=_extensions())
