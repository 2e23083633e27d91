"""ConsoleBackend: storage (embedded or configured) and, optionally, the in-process device server.

The console reads storage through the same StorageRuntime the server uses and subscribes to the
device server's LiveFeed; it never reaches into server internals beyond those two public objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from server.config import Settings
from server.live.feed import LiveFeed
from server.runtime import StorageRuntime
from server.storage.audio_store import AudioStore
from server.storage.conversation_store import ConversationStore
from server.storage.errors import StorageError

log = logging.getLogger(__name__)


@dataclass
class DeviceEndpoints:
    websocket_url: str
    ota_url: str

    def lines(self) -> list[str]:
        return [f"devices connect to: {self.websocket_url}", f"OTA URL for the firmware: {self.ota_url}"]


@dataclass
class ConsoleBackend:
    settings: Settings
    serve_devices: bool = True
    runtime: StorageRuntime | None = None
    device_server: object | None = None  # server.device.server.DeviceServer, imported lazily (it loads models)
    live: LiveFeed = field(default_factory=lambda: LiveFeed(server_name="console"))
    endpoints: DeviceEndpoints | None = None

    @property
    def store(self) -> ConversationStore:
        if self.runtime is None or self.runtime.store is None:
            raise StorageError("storage is not connected")
        return self.runtime.store

    @property
    def audio(self) -> AudioStore | None:
        return None if self.runtime is None else self.runtime.audio

    @property
    def started(self) -> bool:
        return self.runtime is not None and self.runtime.store is not None

    async def start_storage(self) -> list[str]:
        """Embedded services (when configured), the pool, the schema, S3 and the event bus."""
        runtime = StorageRuntime(self.settings)
        await runtime.start(retention=self.serve_devices)
        self.runtime = runtime
        return runtime.describe()

    async def start_device_server(self) -> DeviceEndpoints:
        """The device server in this process; takes free ports when the configured ones are taken."""
        from server.device.server import DeviceServer

        assert self.runtime is not None
        server = DeviceServer(self.settings, runtime=self.runtime, live=self.live)
        try:
            await server.start()
        except OSError as exc:
            log.warning("device server ports busy (%s); using free ports", exc)
            await server.stop()
            self.settings.server = self.settings.server.model_copy(update={"port": 0, "http_port": 0})
            server = DeviceServer(self.settings, runtime=self.runtime, live=self.live)
            await server.start()
        self.device_server = server
        self.endpoints = DeviceEndpoints(server.websocket_url(), server.ota_url())
        return self.endpoints

    async def stop(self) -> None:
        server, self.device_server = self.device_server, None
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.stop(), 15)  # type: ignore[attr-defined]
        runtime, self.runtime = self.runtime, None
        if runtime is not None:
            await runtime.stop()

    async def ping(self) -> None:
        """Raise when PostgreSQL does not answer (the banner's retry calls this)."""
        assert self.runtime is not None and self.runtime.pool is not None
        await self.runtime.pool.fetchval("SELECT 1")
