"""``ambrosia run`` on either event loop: the standard one, and uvloop (the ``fast`` extra).

Each loop runs the counter example end to end in real processes: a client calls a
server twice and prints 1 and 2, and each process is seen to run on the loop asked for.
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest

from ambrosia import eventloop
from ambrosia.errors import ConfigError
from ambrosia.testing.harness import Deployment

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None
NO_UVLOOP = "uvloop is not installed (pip install 'ambrosia[fast]')"
# A liveness limit: the two calls take well under a second once both processes are up.
LIVENESS_S = 60.0


@pytest.mark.parametrize(
    "loop",
    ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(not HAS_UVLOOP, reason=NO_UVLOOP))],
)
def test_a_call_end_to_end_on_each_event_loop(tmp_path: Path, loop: str) -> None:
    deployment = Deployment(tmp_path, env={eventloop.ENVIRONMENT_VARIABLE: loop})
    deployment.register("server", "examples.counter.app:Counter")
    deployment.register("client", "examples.counter.app:Client")
    try:
        deployment.start("server")
        deployment.start("client")
        deployment.wait_for(
            lambda: deployment.output("client").split().count("2") >= 1,
            LIVENESS_S,
            "the client's second result",
        )
        # Which loop each process runs: uvloop's extension module is loaded only when
        # its loop is chosen (the debug line "event loop: ..." says the same with -v).
        for name in ("server", "client"):
            maps = Path(f"/proc/{deployment.processes[name].pid}/maps").read_text()
            assert ("uvloop/loop." in maps) == (loop == "uvloop"), name
    finally:
        deployment.stop_all()
    printed = [line for line in deployment.output("client").splitlines() if line.isdigit()]
    assert printed == ["1", "2"]


def test_the_setting_picks_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    assert eventloop.chosen_loop("asyncio") == "asyncio"
    assert eventloop.loop_factory("asyncio") is None
    expected = "uvloop" if HAS_UVLOOP else "asyncio"
    assert eventloop.chosen_loop("auto") == expected
    monkeypatch.delenv(eventloop.ENVIRONMENT_VARIABLE, raising=False)
    assert eventloop.chosen_loop() == expected
    monkeypatch.setenv(eventloop.ENVIRONMENT_VARIABLE, " AsyncIO ")
    assert eventloop.chosen_loop() == "asyncio"
    with pytest.raises(ConfigError, match="AMBROSIA_EVENT_LOOP='tokio': choose one of"):
        eventloop.chosen_loop("tokio")


def test_asking_for_a_missing_uvloop_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventloop, "_uvloop_factory", lambda: None)
    assert eventloop.chosen_loop("auto") == "asyncio"
    with pytest.raises(ConfigError, match=r"uvloop is not installed; pip install"):
        eventloop.chosen_loop("uvloop")

    async def never() -> int:
        raise AssertionError("not to be run")

    with pytest.raises(ConfigError):
        eventloop.run(never(), setting="uvloop")


def test_run_returns_what_the_coroutine_returns_on_the_chosen_loop() -> None:
    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert eventloop.run(loop_module(), setting="asyncio").startswith("asyncio")
    if HAS_UVLOOP:
        assert eventloop.run(loop_module(), setting="uvloop").startswith("uvloop")
