"""A loopback TCP forwarder that leaves its first connections unanswered (a busy service)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class StallingForwarder:
    """A loopback TCP port in front of an emulator that leaves its first connections unanswered.

    The first ``stalled`` connections are accepted and read, never answered (a service too
    busy to reply within the request timeout); later ones are forwarded both ways.
    """

    def __init__(self, target_port: int, stalled: int) -> None:
        self.target_port = target_port
        self.stalled = stalled
        self.connections = 0
        self.port = 0
        self._held: list[asyncio.StreamWriter] = []

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.connections <= self.stalled:
            self._held.append(writer)
            while await reader.read(65536):
                pass
            return
        target_reader, target_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pipe(reader, target_writer), self._pipe(target_reader, writer))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[StallingForwarder]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            for writer in self._held:
                writer.close()
            server.close()
