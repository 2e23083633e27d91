"""StorageRuntime: everything the storage core needs, built from Settings, started and stopped in order.

The device server, the console and the CLI all start storage through this one object: embedded
services when the config asks for them, the PostgreSQL pool and schema, the audio store, the memory
provider, the event bus and the retention schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Literal
from urllib.parse import urlparse

import asyncpg
from pydantic import SecretStr

from server.config import Settings
from server.events.bus import EventBus
from server.events.handlers import StorageHandlers
from server.memory.base import MemoryProvider
from server.memory.factory import memory_from_settings
from server.services.embedded import EmbeddedServices
from server.storage import schema
from server.storage.audio_store import AudioStore
from server.storage.conversation_store import ConversationStore
from server.storage.db import connect, create_pool, describe
from server.storage.errors import StorageError
from server.storage.retention import RetentionJob, retention_loop

log = logging.getLogger(__name__)


class StorageRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.embedded: EmbeddedServices | None = None
        self.pool: asyncpg.Pool | None = None
        self.store: ConversationStore | None = None
        self.audio: AudioStore | None = None
        self.memory: MemoryProvider | None = None
        self.bus: EventBus | None = None
        self._stop_retention = asyncio.Event()
        self._retention_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StorageRuntime:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(
        self,
        *,
        events: bool = True,
        schema_mode: Literal["upgrade", "require", "none"] = "upgrade",
        audio: bool = True,
        retention: bool = False,
    ) -> None:
        """Start in dependency order; on failure, stop what already started and re-raise.

        ``schema_mode``: apply pending schema versions, require the schema to be current, or leave it alone
        (``xiaozhi db …`` does its own). ``events`` also builds the memory provider the bus writes to.
        """
        try:
            await self._start_embedded()
            await self._open_database(schema_mode)
            if audio:
                await self._open_audio()
            if events:
                assert self.store is not None
                self.memory = await memory_from_settings(self.settings, store=self.store, pool=self.pool)
                await self._start_bus()
            if retention:
                self.start_retention_schedule()
        except BaseException:
            await self.stop()
            raise

    async def _start_embedded(self) -> None:
        want_pg = self.settings.database.embedded
        want_s3 = self.settings.minio is not None and self.settings.minio.embedded
        if not (want_pg or want_s3):
            return
        self.embedded = EmbeddedServices(self.settings.data_dir / "services")
        await self.embedded.astart(postgres=want_pg, s3=want_s3)
        if want_pg:
            assert self.embedded.postgres_dsn is not None
            url = urlparse(self.embedded.postgres_dsn)
            self.settings.database = self.settings.database.model_copy(
                update={
                    "host": url.hostname,
                    "port": url.port,
                    "username": "postgres",
                    "password": SecretStr(""),
                    "ssl_mode": "disable",
                }
            )
            await self._create_database_if_missing()
        if want_s3 and self.settings.minio is not None:
            creds = self.embedded.s3_credentials()
            self.settings.minio = self.settings.minio.model_copy(
                update={
                    "endpoint": self.embedded.s3_endpoint,
                    "access_key_id": creds.access_key,
                    "secret_access_key": SecretStr(creds.secret_key),
                    "use_ssl": False,
                }
            )

    async def _create_database_if_missing(self) -> None:
        name = self.settings.database.database
        admin = await connect(self.settings.database.model_copy(update={"database": "postgres"}))
        try:
            if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                await admin.execute(f'CREATE DATABASE "{name.replace(chr(34), "")}"')
                log.info("created database %s in the embedded PostgreSQL", name)
        finally:
            await admin.close()

    async def _open_database(self, schema_mode: str) -> None:
        self.pool = await create_pool(self.settings.database)
        async with self.pool.acquire() as conn:
            if schema_mode == "upgrade":
                applied = await schema.upgrade(conn)
                if applied:
                    log.info("database schema upgraded to version %d", applied[-1].version)
            elif schema_mode == "require":
                await schema.require_current(conn)
        self.store = ConversationStore(self.pool)

    async def _open_audio(self) -> None:
        minio = self.settings.minio
        if minio is None or not self.settings.conversation.enable_audio_storage:
            why = "no minio section in the config" if minio is None else "conversation.enable_audio_storage is false"
            log.info("audio store not started (%s): audio saving is off", why)
            return
        assert self.store is not None
        self.audio = AudioStore(minio, self.store)
        try:
            await self.audio.start()
            days = self.settings.conversation.message_retention_days
            # The lifecycle rule is a backstop behind the retention job, which removes rows and objects together.
            await self.audio.set_lifecycle(days + 1 if days else 0)
        except StorageError as exc:
            log.error("audio store not ready (%s); audio will be spooled and written when S3 answers", exc)

    async def _start_bus(self) -> None:
        ev = self.settings.events
        write_history = self.settings.conversation.storage_type == "postgres"
        handlers = StorageHandlers(self.store if write_history else None, self.audio, self.memory)
        self.bus = EventBus(
            handlers,
            self.settings.spool_dir,
            shards=ev.shards,
            queue_size=ev.queue_size,
            batch_size=ev.batch_size,
            retries=ev.retries,
            retry_backoff_s=ev.retry_backoff_s,
            replay_interval_s=ev.replay_interval_s,
        )
        await self.bus.start()

    def retention_job(self) -> RetentionJob:
        assert self.pool is not None
        return RetentionJob(self.pool, self.audio, self.settings.conversation.message_retention_days)

    def start_retention_schedule(self) -> None:
        if self.settings.conversation.message_retention_days == 0 or self._retention_task is not None:
            return
        self._retention_task = asyncio.create_task(
            retention_loop(self.retention_job(), self.settings.conversation.retention_interval_s, self._stop_retention),
            name="retention",
        )

    async def stop(self) -> None:
        """Stop in reverse order; the bus drains (or spools) before the pool closes."""
        self._stop_retention.set()
        if self._retention_task is not None:
            with contextlib.suppress(Exception):
                await self._retention_task
            self._retention_task = None
        if self.bus is not None:
            await self.bus.close(self.settings.events.drain_timeout_s)
            self.bus = None
        if self.memory is not None:
            with contextlib.suppress(Exception):
                await self.memory.close()
            self.memory = None
        if self.audio is not None:
            self.audio.close()
            self.audio = None
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pool.close(), 10)
            self.pool = None
        if self.embedded is not None:
            await self.embedded.astop()
            self.embedded = None

    def describe(self) -> list[str]:
        lines = [describe(self.settings.database)]
        lines.append(self.audio.describe() if self.audio else "audio saving off")
        lines.append(f"memory provider: {self.memory.name if self.memory else '-'}")
        return lines
