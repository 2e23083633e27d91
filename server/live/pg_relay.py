"""Live events across processes through PostgreSQL LISTEN/NOTIFY.

Several device servers can share one PostgreSQL + S3; a console must see all of them. Each server
NOTIFYs its coarse events (connect, state, stt, tts, tool calls, errors) on one channel and every
listener re-publishes the other servers' events into its local LiveFeed. High-rate kinds (audio levels,
per-frame events) stay in-process: they would turn PostgreSQL into an audio bus. PostgreSQL was chosen
over Redis pub/sub because it is always there; Redis stays optional (S31).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import asyncpg

from server.config import DatabaseSettings
from server.live.feed import LiveEvent, LiveFeed
from server.storage.db import connect

log = logging.getLogger(__name__)
CHANNEL = "xiaozhi_live"
LOCAL_ONLY = frozenset({"level", "uplink", "downlink"})
MAX_PAYLOAD = 7900  # NOTIFY payloads must stay under 8000 bytes


def encode(event: LiveEvent) -> str:
    payload = json.dumps(event.to_json(), ensure_ascii=False)
    if len(payload.encode()) <= MAX_PAYLOAD:
        return payload
    slim = event.to_json()
    slim["data"] = {"truncated": True, **{k: v for k, v in event.data.items() if isinstance(v, int | float | bool)}}
    return json.dumps(slim, ensure_ascii=False)


class PgLiveRelay:
    def __init__(
        self, settings: DatabaseSettings, feed: LiveFeed, *, publish: bool = True, queue_size: int = 1000
    ) -> None:
        self.settings = settings
        self.feed = feed
        self.publish = publish
        self._outbox: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self.dropped = 0
        self.received = 0
        self.connected = asyncio.Event()

    async def start(self) -> None:
        if self.publish:
            self.feed.add_relay(self._enqueue)
        self._task = asyncio.create_task(self._run(), name="live-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close_conn()

    def _enqueue(self, event: LiveEvent) -> None:
        if event.kind in LOCAL_ONLY:
            return
        if self._outbox.full():
            self._outbox.get_nowait()
            self.dropped += 1
        self._outbox.put_nowait(encode(event))

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            event = LiveEvent.from_json(json.loads(payload))
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed live event on %s", CHANNEL)
            return
        if event.server == self.feed.server_name and self.publish:
            return  # our own, already delivered locally
        self.received += 1
        self.feed.publish(event, relay=False)

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                self._conn = await connect(self.settings)
                await self._conn.add_listener(CHANNEL, self._on_notify)
                self.connected.set()
                backoff = 0.5
                while True:
                    payload = await self._outbox.get()
                    batch = [payload]
                    while not self._outbox.empty() and len(batch) < 100:
                        batch.append(self._outbox.get_nowait())
                    await self._conn.executemany("SELECT pg_notify($1, $2)", [(CHANNEL, p) for p in batch])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # PostgreSQL went away: keep trying, the device path never notices
                self.connected.clear()
                log.warning("live relay lost PostgreSQL (%s); retrying in %.1f s", exc, backoff)
                await self._close_conn()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10)

    async def _close_conn(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=2)
            self._conn = None
