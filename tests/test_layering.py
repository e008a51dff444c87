"""Which packages may import which, read from the source with ``ast``.

A layer that imports upward grows a cycle that no single change reveals; this test
makes the arrow visible the moment it is drawn. For now it holds one rule: test doubles
stay reachable from tests only, so nothing outside ``ambrosia.testing`` and
``ambrosia.bench`` (the benchmark kit, which drives the testing workloads) imports
``ambrosia.testing``, not even lazily inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ambrosia

PACKAGE_ROOT = Path(ambrosia.__file__).parent
TESTING = "ambrosia.testing"
ALLOWED_TO_IMPORT_TESTING = ("ambrosia.testing", "ambrosia.bench")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it, relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return imports_in(path.read_text(), package)


def imports_in(source: str, package: str) -> set[str]:
    """Every module ``source``, a module of ``package``, imports (lazily too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # ``from ambrosia import testing`` imports a module by its attribute name.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_parser_sees_every_spelling_of_an_import() -> None:
    source = (
        "import ambrosia.testing.faults\n"
        "def later():\n"
        "    from ambrosia.testing.faults import install_faults\n"
        "    from ..testing import workloads\n"
        "    from ambrosia import testing\n"
    )
    found = imports_in(source, "ambrosia.coordinator")
    assert {
        "ambrosia.testing.faults",
        "ambrosia.testing.workloads",
        "ambrosia.testing",
    } <= found
    assert module_name(PACKAGE_ROOT / "coordinator" / "__init__.py") == "ambrosia.coordinator"


def test_nothing_outside_testing_and_bench_imports_the_testing_package() -> None:
    offenders = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        name = module_name(path)
        if any(within(name, allowed) for allowed in ALLOWED_TO_IMPORT_TESTING):
            continue
        for imported in sorted(imported_modules(path)):
            if within(imported, TESTING):
                offenders.append(f"{name} imports {imported}")
    assert offenders == []


# Which package may import which: the coordinator knows bytes, not types, and reaches the
# application only through ``ambrosia.coordinator.binding_port``; the binding knows
# nothing of the coordinator; the sans-IO layers (wire, log, protocol) import neither,
# and no event loop. ``ambrosia.host`` and ``ambrosia.separate`` choose and build.
FORBIDDEN_IMPORTS = {
    "ambrosia.coordinator": ("ambrosia.binding",),
    "ambrosia.binding": ("ambrosia.coordinator",),
    "ambrosia.protocol": ("ambrosia.coordinator", "ambrosia.binding", "asyncio"),
    "ambrosia.wire": ("ambrosia.coordinator", "ambrosia.binding", "ambrosia.protocol", "asyncio"),
    "ambrosia.log": ("ambrosia.coordinator", "ambrosia.binding", "ambrosia.protocol", "asyncio"),
}


def layer_offenders() -> list[str]:
    offenders = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        name = module_name(path)
        for layer, forbidden in FORBIDDEN_IMPORTS.items():
            if not within(name, layer):
                continue
            for imported in sorted(imported_modules(path)):
                if any(within(imported, package) for package in forbidden):
                    offenders.append(f"{name} imports {imported}")
    return offenders


def test_the_coordinator_and_the_binding_import_nothing_of_each_other() -> None:
    assert layer_offenders() == []


def test_the_layer_check_sees_an_arrow_drawn_back() -> None:
    found = imports_in(
        "from ambrosia.binding.dispatcher import Dispatcher\n", "ambrosia.coordinator"
    )
    assert any(within(module, "ambrosia.binding") for module in found)
    assert within("ambrosia.binding.dispatcher", FORBIDDEN_IMPORTS["ambrosia.coordinator"][0])
