"""Which asyncio event loop a process runs on: uvloop when installed, else the standard one.

uvloop (the ``fast`` extra: ``pip install ambrosia[fast]``) is a drop-in asyncio event
loop built on libuv. ``ambrosia run`` and the benchmark's processes start their loop
with ``run`` here, which picks it by the ``AMBROSIA_EVENT_LOOP`` environment variable:

- ``auto`` (or unset): uvloop if it can be imported, else the standard loop;
- ``uvloop``: uvloop, and a ``ConfigError`` saying how to install it if it is missing;
- ``asyncio``: the standard loop, whatever is installed.

Nothing else changes with the loop: both run the same code, and the tests run a call
end to end on each (the uvloop one skipped, with the reason, where it is not installed).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ambrosia.errors import ConfigError

__all__ = ["ENVIRONMENT_VARIABLE", "LOOPS", "chosen_loop", "loop_factory", "run"]

ENVIRONMENT_VARIABLE = "AMBROSIA_EVENT_LOOP"
LOOPS = ("auto", "uvloop", "asyncio")

_T = TypeVar("_T")
logger = logging.getLogger("ambrosia.eventloop")


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def chosen_loop(setting: str | None = None) -> str:
    """``"uvloop"`` or ``"asyncio"``: the loop ``setting`` (default: the environment) gives."""
    value = setting if setting is not None else os.environ.get(ENVIRONMENT_VARIABLE, "auto")
    value = value.strip().lower() or "auto"
    if value not in LOOPS:
        raise ConfigError(f"{ENVIRONMENT_VARIABLE}={value!r}: choose one of {', '.join(LOOPS)}")
    if value == "asyncio":
        return "asyncio"
    if _uvloop_factory() is not None:
        return "uvloop"
    if value == "uvloop":
        raise ConfigError(
            f"{ENVIRONMENT_VARIABLE}=uvloop but uvloop is not installed; "
            "pip install 'ambrosia[fast]', or set it to auto or asyncio"
        )
    return "asyncio"


def loop_factory(setting: str | None = None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory for ``asyncio.Runner``; None means the standard loop."""
    return _uvloop_factory() if chosen_loop(setting) == "uvloop" else None


def run(main: Coroutine[Any, Any, _T], *, setting: str | None = None) -> _T:
    """``asyncio.run(main)`` on the chosen loop."""
    try:
        factory = loop_factory(setting)
    except BaseException:
        main.close()  # never awaited: say nothing about it beyond the error
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_logged(main))


async def _logged(main: Coroutine[Any, Any, _T]) -> _T:
    loop = type(asyncio.get_running_loop())
    logger.debug("event loop: %s.%s", loop.__module__, loop.__qualname__)
    return await main
