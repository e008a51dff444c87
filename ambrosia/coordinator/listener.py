"""Accepting peer connections within the descriptor budget.

asyncio's own server (``loop.create_server``) accepts up to its listen backlog (100)
sockets each time the listening socket is readable, before any protocol has seen one of
them, and closes a transport one loop turn after it is asked to. A limit checked when a
connection is made therefore comes too late for a burst: 200 idle connections to an
instance limited to 128 descriptors took them all (the limit was 63 connections),
``accept`` failed with EMFILE, logged with a traceback per attempt, and the instance's
own files (chunks, checkpoints) could not be opened in that window.

So this module accepts one socket at a time and checks the limit before anything else
holds it: a connection beyond the limit is closed at once (it costs one descriptor for
an instant), one within it becomes a transport. Connections still in their TLS handshake
count against the limit from the moment they are accepted (asyncio calls the protocol's
``connection_made`` only once the handshake is done). When ``accept`` itself fails for
want of descriptors or memory (the application or the log may hold more than the
reserve), accepting pauses for ``ACCEPT_PAUSE_S`` with one warning per episode, and the
waiting connections stay in the kernel's backlog; the instance never exits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import time
from collections.abc import Callable

logger = logging.getLogger("ambrosia.links")

# How long accepting pauses when the process or the system is out of descriptors.
ACCEPT_PAUSE_S = 0.1
# Refused TLS handshakes logged one by one in any second; the rest are counted.
REFUSALS_LOGGED_PER_S_MAX = 10
_EXHAUSTED = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))


class Listener:
    """Accepts connections on ``sock`` for ``protocol_factory`` within ``limit()``.

    ``open_count()`` is the number of connections the owner already holds (made, not yet
    lost); the listener adds those it has accepted that are not made yet.
    """

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        *,
        limit: Callable[[], int],
        open_count: Callable[[], int],
        tls: ssl.SSLContext | None = None,
        tls_handshake_timeout_s: float | None = None,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self._protocol_factory = protocol_factory
        self._limit = limit
        self._open_count = open_count
        self._tls = tls
        self._tls_handshake_timeout_s = tls_handshake_timeout_s
        self._refusals_window_start = 0.0
        self._refusals_logged = 0
        self._refusals_suppressed = 0
        self._making: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self.refused = 0

    @classmethod
    async def bind(
        cls,
        host: str,
        port: int,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        *,
        limit: Callable[[], int],
        open_count: Callable[[], int],
        tls: ssl.SSLContext | None = None,
        tls_handshake_timeout_s: float | None = None,
    ) -> Listener:
        """Listen on the first address of ``host:port`` (port 0: any free one)."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        if not infos:
            raise OSError(f"no address to listen on for {host}:{port}")
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(socket.SOMAXCONN)
        except BaseException:
            sock.close()
            raise
        return cls(
            sock,
            protocol_factory,
            limit=limit,
            open_count=open_count,
            tls=tls,
            tls_handshake_timeout_s=tls_handshake_timeout_s,
        )

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._accept_loop())

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        paused = False
        while True:
            try:
                connection, address = await loop.sock_accept(self.sock)
            except OSError as error:
                if error.errno not in _EXHAUSTED:
                    logger.debug("accept failed: %s", error)  # the peer gave up first
                    continue
                if not paused:
                    paused = True
                    logger.warning("accepting paused (%s); waiting connections wait", error)
                await asyncio.sleep(ACCEPT_PAUSE_S)
                continue
            if paused:
                paused = False
                logger.info("accepting again")
            limit = self._limit()
            if self._open_count() + len(self._making) >= limit:
                self.refused += 1
                logger.warning(
                    "closing connection from %s: too many peer connections (limit %d)",
                    _describe(address),
                    limit,
                )
                connection.close()
                continue
            task = loop.create_task(self._make(connection, address))
            self._making.add(task)
            task.add_done_callback(self._making.discard)

    async def _make(self, connection: socket.socket, address: object) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                self._protocol_factory,
                connection,
                ssl=self._tls,
                ssl_handshake_timeout=self._tls_handshake_timeout_s if self._tls else None,
            )
        except (ssl.SSLError, TimeoutError) as error:
            # A refused certificate or a handshake past its deadline: an audit trail wants
            # one line per refusal, but a flood of them must not fill the disk.
            self._refused(address, error)
            _close(connection)
        except OSError as error:
            # The peer went away mid-handshake: asyncio has closed the transport.
            logger.debug("connection from %s not made: %s", _describe(address), error)
            _close(connection)

    def _refused(self, address: object, error: BaseException) -> None:
        now = time.monotonic()
        if now - self._refusals_window_start >= 1.0:
            if self._refusals_suppressed:
                logger.warning(
                    "%d more TLS handshakes refused in the last second (not logged one by one)",
                    self._refusals_suppressed,
                )
            self._refusals_window_start = now
            self._refusals_logged = 0
            self._refusals_suppressed = 0
        if self._refusals_logged < REFUSALS_LOGGED_PER_S_MAX:
            self._refusals_logged += 1
            reason = "handshake deadline passed" if isinstance(error, TimeoutError) else error
            logger.warning("TLS handshake from %s refused: %s", _describe(address), reason)
        else:
            self._refusals_suppressed += 1

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for task in list(self._making):
            task.cancel()
        with contextlib.suppress(OSError):
            self.sock.close()


def _describe(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


def _close(connection: socket.socket) -> None:
    """Close an accepted socket whose transport failed; uvloop may have closed its fd."""
    with contextlib.suppress(OSError):
        connection.close()
