"""Per-device live events for consoles: one publisher, many subscribers, never a slow consumer's problem.

Each subscriber has its own bounded queue; when it is full the OLDEST event is dropped (a console that
fell behind wants the newest state, and the device path must never wait for it). Drops are counted
per subscriber so a console can show "n events skipped".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

EventKind = Literal[
    "connect", "disconnect", "state", "level", "uplink", "downlink", "stt", "llm", "tts", "tool_call",
    "tool_result", "error",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class LiveEvent:
    kind: EventKind
    device_id: str
    session_id: str
    data: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)
    server: str = ""  # which server process saw it (several can share one database)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "device_id": self.device_id, "session_id": self.session_id, "data": self.data,
            "ts": self.ts, "server": self.server,
        }  # fmt: skip

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> LiveEvent:
        return cls(
            kind=record["kind"], device_id=str(record["device_id"]), session_id=str(record["session_id"]),
            data=dict(record.get("data") or {}), ts=float(record.get("ts", time.time())),
            server=str(record.get("server", "")),
        )  # fmt: skip


class Subscription:
    def __init__(self, feed: LiveFeed, maxsize: int, accept: Callable[[LiveEvent], bool]) -> None:
        self._feed = feed
        self._queue: asyncio.Queue[LiveEvent] = asyncio.Queue(maxsize=maxsize)
        self._accept = accept
        self.dropped = 0
        self.closed = False

    def offer(self, event: LiveEvent) -> None:
        if self.closed or not self._accept(event):
            return
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(event)

    async def get(self) -> LiveEvent:
        return await self._queue.get()

    def drain(self) -> list[LiveEvent]:
        """Everything queued now, without waiting (a GUI timer drains this way)."""
        items = []
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        return items

    def close(self) -> None:
        self.closed = True
        self._feed._subscribers.discard(self)

    def __aiter__(self) -> AsyncIterator[LiveEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[LiveEvent]:
        while not self.closed:
            yield await self._queue.get()


class LiveFeed:
    def __init__(self, server_name: str = "") -> None:
        self.server_name = server_name
        self._subscribers: set[Subscription] = set()
        self._relays: list[Callable[[LiveEvent], None]] = []

    def subscribe(self, *, device_id: str | None = None, maxsize: int = 512) -> Subscription:
        accept = (lambda e: True) if device_id is None else (lambda e: e.device_id == device_id)
        sub = Subscription(self, maxsize, accept)
        self._subscribers.add(sub)
        return sub

    def add_relay(self, relay: Callable[[LiveEvent], None]) -> None:
        """Also hand every local event to ``relay`` (e.g. cross-process fan-out); it must not block."""
        self._relays.append(relay)

    def publish(self, event: LiveEvent, *, relay: bool = True) -> None:
        for sub in list(self._subscribers):
            sub.offer(event)
        if relay:
            for forward in self._relays:
                forward(event)

    def emit(self, kind: EventKind, device_id: str, session_id: str, **data: Any) -> None:
        self.publish(LiveEvent(kind, device_id, session_id, data, server=self.server_name))

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
