"""Per-device live events for consoles: one publisher, many subscribers, never a slow consumer's problem.

Each subscriber has its own bounded queue; when it is full the OLDEST event is dropped (a console that
fell behind wants the newest state, and the device path must never wait for it). Drops are counted
per subscriber so a console can show "n events skipped".
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

EventKind = Literal[
    "connect", "disconnect", "state", "level", "uplink", "downlink", "stt", "llm", "tts", "tool_call",
    "tool_result", "error", "command",
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
        data = self.data
        if isinstance(data.get("packet"), bytes):  # listen-in audio: JSON carries it as base64
            data = {**data, "packet": base64.b64encode(data["packet"]).decode("ascii"), "encoding": "base64"}
        return {
            "kind": self.kind, "device_id": self.device_id, "session_id": self.session_id, "data": data,
            "ts": self.ts, "server": self.server,
        }  # fmt: skip

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> LiveEvent:
        return cls(
            kind=record["kind"], device_id=str(record["device_id"]), session_id=str(record["session_id"]),
            data=_decode_data(dict(record.get("data") or {})), ts=float(record.get("ts", time.time())),
            server=str(record.get("server", "")),
        )  # fmt: skip


AUDIO_KINDS = frozenset({"uplink", "downlink"})


def _decode_data(data: dict[str, Any]) -> dict[str, Any]:
    if data.pop("encoding", None) == "base64" and isinstance(data.get("packet"), str):
        data["packet"] = base64.b64decode(data["packet"])
    return data


class Subscription:
    def __init__(
        self, feed: LiveFeed, maxsize: int, accept: Callable[[LiveEvent], bool], audio_of: str | None = None
    ) -> None:
        self._feed = feed
        self.audio_of = audio_of  # the device whose uplink/downlink frames this subscriber listens to
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
        if self.closed:
            return
        self.closed = True
        self._feed._subscribers.discard(self)
        if self.audio_of is not None:
            self._feed._listeners[self.audio_of] -= 1
            if not self._feed._listeners[self.audio_of]:
                del self._feed._listeners[self.audio_of]

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
        self._listeners: dict[str, int] = {}  # device id → subscribers listening in to its audio

    def subscribe(self, *, device_id: str | None = None, maxsize: int = 512, audio: bool = False) -> Subscription:
        """Events of every device or of one; ``audio=True`` (one device only) adds its uplink and downlink
        opus frames ("listen-in"), which are produced only while someone listens."""
        if audio and device_id is None:
            raise ValueError("listening in needs a device_id")

        def accept(e: LiveEvent) -> bool:
            return (device_id is None or e.device_id == device_id) and (audio or e.kind not in AUDIO_KINDS)

        sub = Subscription(self, maxsize, accept, audio_of=device_id if audio else None)
        self._subscribers.add(sub)
        if audio and device_id is not None:
            self._listeners[device_id] = self._listeners.get(device_id, 0) + 1
        return sub

    def wants_audio(self, device_id: str) -> bool:
        """Someone listens in to this device: emit its audio frames (checked per frame, so it is a dict lookup)."""
        return device_id in self._listeners

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
