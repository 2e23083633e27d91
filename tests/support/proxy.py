"""A real TCP forwarder between a client and a real server, which a test can cut and restore.

This is how tests make PostgreSQL or S3 "go away" mid-run without stopping the machine's server:
every byte still travels over real sockets to the real service.
"""

from __future__ import annotations

import asyncio
import contextlib


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0) -> FaultProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._conns.update((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError, RuntimeError):
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._conns.difference_update((writer, up_writer))

    async def cut(self) -> None:
        """Refuse new connections and reset the open ones (the server 'disappears')."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._conns):
            transport = writer.transport
            with contextlib.suppress(Exception):
                transport.abort()
        self._conns.clear()

    async def restore(self) -> None:
        if self._server is None:
            await self.start(self.port)

    async def close(self) -> None:
        await self.cut()
