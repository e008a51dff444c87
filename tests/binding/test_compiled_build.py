"""The hot modules work in whichever form is installed: pure Python or compiled (mypyc).

The ordinary run checks the pure-Python form; ``scripts/check-compiled`` builds the
compiled form in a scratch copy and runs these tests (and the rest of the compiled
packages' tests) there with ``AMBROSIA_EXPECT_COMPILED=1``.
"""

from __future__ import annotations

import ast
import importlib
import itertools
import os
from pathlib import Path

from ambrosia.bench import hotpath

ROOT = Path(__file__).resolve().parents[2]


def _compiled_module_names() -> list[str]:
    """``COMPILED_MODULES`` of setup.py, read without running it."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "COMPILED_MODULES"
        ):
            paths = ast.literal_eval(node.value)
            return [path.removesuffix(".py").replace("/", ".") for path in paths]
    raise AssertionError("setup.py has no COMPILED_MODULES")


def test_every_listed_module_exists_and_the_build_is_whole() -> None:
    names = _compiled_module_names()
    assert names
    compiled = set()
    for name in names:
        module = importlib.import_module(name)
        assert (ROOT / (name.replace(".", "/") + ".py")).is_file()  # the fallback is kept
        if str(module.__file__).endswith(".so"):
            compiled.add(name)
    if os.environ.get("AMBROSIA_EXPECT_COMPILED") == "1":
        assert compiled == set(names)
    else:
        # All or nothing: a partly compiled package is a stale build.
        assert compiled in (set(), set(names))
    assert set(hotpath.compiled_modules()) >= compiled


def test_the_hot_path_delivers_every_call_in_order() -> None:
    elapsed, segments = hotpath.client_round(16)
    calls = sum(segment.count for segment in segments)
    assert calls == 20_000 and elapsed > 0
    assert segments[0].first_seq == 1
    assert all(
        later.first_seq == earlier.last_seq + 1 for earlier, later in itertools.pairwise(segments)
    )
    _, seen = hotpath.server_round(segments)
    assert seen == calls
