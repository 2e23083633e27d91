"""What every connection of one device server shares: settings, providers, VAD, storage, live feed."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from server.config import ServerSettings
from server.events.bus import EventBus
from server.events.types import Event
from server.live.feed import LiveFeed
from server.pipeline.llm import ChatMessage
from server.pipeline.registry import PipelineProviders
from server.pipeline.speech import SpeechRenderer
from server.pipeline.uplink import UplinkAnalyzer
from server.storage.conversation_store import ConversationStore
from server.storage.errors import InvalidInput

if TYPE_CHECKING:
    from server.device.connection import DeviceConnection

log = logging.getLogger(__name__)
STORAGE_READ_TIMEOUT_S = 3.0  # a connection never waits longer than this for the previous context


@dataclass
class ServerContext:
    settings: ServerSettings
    providers: PipelineProviders
    vad: UplinkAnalyzer
    live: LiveFeed
    speech: SpeechRenderer
    bus: EventBus | None = None
    store: ConversationStore | None = None
    context_messages: int = 20
    server_name: str = ""
    connections: dict[str, DeviceConnection] = field(default_factory=dict)
    wakeup_words: frozenset[str] = frozenset()
    by_vad_stream: dict[int, DeviceConnection] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.wakeup_words = frozenset(w.casefold() for w in self.settings.wakeup_words)

    def publish(self, event: Event) -> None:
        """Hand an event to storage; never raises into the device path."""
        if self.bus is None:
            return
        try:
            self.bus.publish(event)
        except InvalidInput as exc:
            log.error("event of session %s not stored: %s", event.session_id, exc)

    async def load_context(self, device_id: str, session_id: str) -> list[ChatMessage]:
        if self.store is None or self.context_messages == 0:
            return []
        async with asyncio.timeout(STORAGE_READ_TIMEOUT_S):
            stored = await self.store.device_context(device_id, self.context_messages, exclude_session=session_id)
        # Tool exchanges are left out: a tool result without its call would confuse the LLM.
        return [ChatMessage(m.role, m.content) for m in stored if m.role in ("user", "assistant") and m.content]

    async def load_system_prompt(self, device_id: str) -> str | None:
        if self.store is None:
            return None
        async with asyncio.timeout(STORAGE_READ_TIMEOUT_S):
            return await self.store.get_system_prompt(device_id)

    def stats(self) -> dict[str, Any]:
        return {"connections": len(self.connections), "vad_streams": len(self.vad)}
