"""``ambrosia run NAME --separate``: the application and its coordinator as two processes.

This process is the binding (``ambrosia.binding.remote``); it starts ``ambrosia
coordinator NAME`` as its child with the same settings and hands it the two listening
sockets of the binding ports (made here first, on loopback, so the binding can connect
the moment the child runs, with no port race). The pair lives and dies together, like
one ``ambrosia run``: the child is asked by the kernel to die with this process (Linux
``PR_SET_PDEATHSIG``, so a SIGKILL of this process takes both down, as a crash test
wants), and this process ends when the coordinator closes its connection. A SIGTERM or
Ctrl-C here stops the child cleanly (it releases the lease) and then this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence

from ambrosia.binding.immortal import Immortal
from ambrosia.binding.remote import run_binding
from ambrosia.errors import ConfigError

logger = logging.getLogger("ambrosia.separate")

_LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
_CHILD_STOP_WAIT_S = 15.0


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the parent dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _listening(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((_LOOPBACK, port))
        sock.listen(8)
    except OSError as error:
        sock.close()
        raise ConfigError(
            f"cannot listen on {_LOOPBACK}:{port} for the binding: {error}"
        ) from error
    sock.set_inheritable(True)
    return sock


def coordinator_arguments(argv: Sequence[str]) -> list[str]:
    """The command line of ``ambrosia run ... --separate`` as ``ambrosia coordinator``."""
    arguments = list(argv)
    index = arguments.index("run")
    arguments[index] = "coordinator"
    out: list[str] = []
    skip = False
    for argument in arguments:
        if skip:
            skip = False
            continue
        if argument in ("--separate",):
            continue
        if argument in ("--app", "--receive-port", "--send-port"):
            skip = True
            continue
        if argument.startswith(("--app=", "--receive-port=", "--send-port=")):
            continue
        out.append(argument)
    return out


def run_separate(
    name: str,
    app_factory: Callable[[], Immortal],
    argv: Sequence[str],
    *,
    receive_port: int = 0,
    send_port: int = 0,
) -> int:
    """Start the coordinator child, run the binding here; the exit code of the pair."""
    receive = _listening(receive_port)
    send = _listening(send_port)
    ports = receive.getsockname()[1], send.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "ambrosia.cli",
        *coordinator_arguments(argv),
        "--receive-fd",
        str(receive.fileno()),
        "--send-fd",
        str(send.fileno()),
    ]
    child = subprocess.Popen(
        command,
        pass_fds=(receive.fileno(), send.fileno()),
        preexec_fn=_die_with_parent,
    )
    receive.close()
    send.close()
    logger.info(
        "%s: binding process %d, coordinator process %d (ports %d/%d)",
        name,
        os.getpid(),
        child.pid,
        *ports,
    )
    try:
        code = asyncio.run(
            _serve(name, app_factory, ports, child),
        )
    finally:
        _stop_child(child)
    child_code = child.returncode
    if child_code not in (0, None):
        return child_code if child_code > 0 else 1
    return code


async def _serve(
    name: str,
    app_factory: Callable[[], Immortal],
    ports: tuple[int, int],
    child: subprocess.Popen[bytes],
) -> int:
    loop = asyncio.get_running_loop()
    binding = loop.create_task(
        run_binding(name, app_factory, host=_LOOPBACK, receive_port=ports[0], send_port=ports[1])
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    stopping = loop.create_task(stop.wait())
    await asyncio.wait({binding, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not binding.done():
        # Asked to stop: the coordinator stops first (clean stop, lease released), which
        # closes the binding's connection.
        _signal_child(child)
        try:
            await asyncio.wait_for(binding, _CHILD_STOP_WAIT_S)
        except TimeoutError:
            binding.cancel()
            return 1
    stopping.cancel()
    return binding.result()


_signalled: set[int] = set()


def _signal_child(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child once: a second one would make it exit at once, unclean."""
    if child.pid in _signalled:
        return
    _signalled.add(child.pid)
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signal.SIGTERM)


def _stop_child(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is not None:
        return
    _signal_child(child)
    try:
        child.wait(_CHILD_STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
