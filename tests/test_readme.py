"""The README as a new user follows it: its code is the example's, its walkthrough runs.

The walkthrough (the README's ``sh`` block that runs ``ambrosia``) is extracted and run
by ``bash -euo pipefail`` from the repository root, as typed, with only its scratch
directory and its two ports replaced (a private directory, ports free now) and with no
``ambrosia`` on the PATH beforehand: the block itself must say how the command gets
there, must not block on an immortal that never exits, and must stop what it started.
The shell runs in a session of its own, so whatever it leaves behind is killed by its
process group id, and the test fails if anything was left.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from ambrosia.testing.emulators import free_loopback_ports

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
README = REPOSITORY_ROOT / "README.md"
DEMO_DIRECTORY = "/tmp/ambrosia-demo"
DEMO_ADDRESSES = ("127.0.0.1:7001", "127.0.0.1:7002")
WALKTHROUGH_LIVENESS_S = 120.0


def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def walkthrough() -> str:
    blocks = [block for block in fenced_blocks(README.read_text(), "sh") if "ambrosia run" in block]
    assert blocks, "README.md has no sh block that runs `ambrosia run`"
    return blocks[0]


def path_without_ambrosia() -> str:
    """The PATH with every directory holding an ``ambrosia`` command removed."""
    kept = [
        entry
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if entry and not (Path(entry) / "ambrosia").exists()
    ]
    return os.pathsep.join(kept)


def test_the_opening_commands_are_the_benchmark_and_the_test_suite() -> None:
    first = fenced_blocks(README.read_text(), "sh")[0]
    commands = [line.split("#")[0].strip() for line in first.splitlines() if line.strip()]
    assert commands == ["./scripts/ambrosia-bench throughput --sizes 16..64K", "./scripts/test"]
    ci = (REPOSITORY_ROOT / ".ci" / "run").read_text()
    assert "./scripts/test" in ci


def test_the_readme_code_is_the_counter_example() -> None:
    """What the README shows is what ``examples/counter/app.py`` runs, word for word."""
    from examples.counter import app

    python_blocks = fenced_blocks(README.read_text(), "python")
    shown = next(block for block in python_blocks if "class Client(Immortal)" in block)
    for cls in (app.Counter, app.Client):
        source = inspect.getsource(cls)
        assert source in shown, f"README.md does not show {cls.__name__} as app.py has it"
    # The guard that keeps a replaying client from printing its values twice.
    assert "if not self.replaying:" in shown


def run_walkthrough(script: str, substitutions: dict[str, str]) -> str:
    """Run ``script`` as the README's reader would, with ``substitutions``; its output.

    Fails unless the script exits 0 and leaves no process of its own running.
    """
    for old, new in substitutions.items():
        assert old in script, f"the walkthrough no longer uses {old}"
        script = script.replace(old, new)
    environment = {**os.environ, "PATH": path_without_ambrosia()}
    for name in ("AMBROSIA_CATALOG", "AMBROSIA_CONFIG", "VIRTUAL_ENV", "PYTHONPATH"):
        environment.pop(name, None)
    # A failing command ends the script at once (-e), and its background processes with
    # it, so the failure shows now rather than after the liveness limit.
    script = "trap 'kill $(jobs -p) 2>/dev/null' ERR\n" + script
    shell = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=REPOSITORY_ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = shell.communicate(timeout=WALKTHROUGH_LIVENESS_S)
    except subprocess.TimeoutExpired:
        _kill_group(shell.pid)
        output, _ = shell.communicate()
        raise AssertionError(
            f"walkthrough unfinished after {WALKTHROUGH_LIVENESS_S} s:\n{output}"
        ) from None
    finally:
        leftovers = _kill_group(shell.pid)
        shell.wait()
    assert shell.returncode == 0, f"walkthrough failed (exit {shell.returncode}):\n{output}"
    assert not leftovers, f"the walkthrough left processes running:\n{output}"
    return output


@pytest.mark.timeout(WALKTHROUGH_LIVENESS_S + 30)
def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    ports = free_loopback_ports(len(DEMO_ADDRESSES))
    substitutions = {DEMO_DIRECTORY: str(tmp_path / "demo")}
    substitutions.update(
        (address, f"127.0.0.1:{port}") for address, port in zip(DEMO_ADDRESSES, ports, strict=True)
    )
    output = run_walkthrough(walkthrough(), substitutions)
    lines = output.splitlines()
    assert lines.index("1") < lines.index("2"), output  # the client's two results
    assert re.search(r"^server\s+127\.0\.0\.1:\d+\s+file://", output, re.MULTILINE), output
    # `ambrosia log server --pages`: the server logged the client's two calls.
    assert "group client 1..1" in output and "group client 2..2" in output, output


@pytest.mark.timeout(WALKTHROUGH_LIVENESS_S + 30)
def test_the_forwarder_readme_replays_after_the_crash_it_describes(tmp_path: Path) -> None:
    """Run, kill -9 the forwarder, restart it, then the README's replay from checkpoint 0."""
    readme = (REPOSITORY_ROOT / "examples" / "forwarder" / "README.md").read_text()
    script = "\n".join(fenced_blocks(readme, "sh"))
    addresses = ("127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103")
    substitutions = {"/tmp/ambrosia-forwarder": str(tmp_path / "forwarder")}
    substitutions.update(
        (address, f"127.0.0.1:{port}")
        for address, port in zip(addresses, free_loopback_ports(3), strict=True)
    )
    output = run_walkthrough(script, substitutions)
    reports = re.findall(r"^report (\d): (\d+) messages in (\S+) s$", output, re.MULTILINE)
    assert [(number, count) for number, count, _ in reports] == [
        (str(n), str(n * 1000)) for n in range(1, 6)
    ], output
    replayed = re.search(r"^5000 \[(.*)\]$", output, re.MULTILINE)
    assert replayed is not None, output
    # The replay, from the first checkpoint, yields the very times the sink received.
    times = [f"{float(value):.6f}" for value in replayed.group(1).split(",")]
    assert times == [elapsed for _, _, elapsed in reports], output


def _kill_group(process_group_id: int) -> bool:
    """True if the walkthrough's process group still had live members; then SIGKILLs it."""
    alive = _group_had_live_members(process_group_id)
    # Gone, or only a zombie leader left (PermissionError on some systems).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process_group_id, signal.SIGKILL)
    return alive


def _group_had_live_members(process_group_id: int) -> bool:
    proc = Path("/proc")
    if not proc.exists():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, process_group = fields[0], int(fields[2])
        if process_group == process_group_id and state != "Z":
            return True
    return False


@pytest.mark.parametrize("example", ["counter", "forwarder", "recorder"])
def test_each_example_readme_puts_ambrosia_on_the_path_before_using_it(example: str) -> None:
    readme = (REPOSITORY_ROOT / "examples" / example / "README.md").read_text()
    first = next(block for block in fenced_blocks(readme, "sh") if "ambrosia " in block)
    commands = [line.split("#")[0].strip() for line in first.splitlines()]
    activation = commands.index("source .venv/bin/activate")
    first_use = next(i for i, line in enumerate(commands) if line.startswith("ambrosia "))
    assert activation < first_use, first
    assert "pip install -e ." not in readme  # the README's setup is scripts/setup.sh
