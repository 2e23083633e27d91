"""What the event bus does with each topic: write history, memory and audio (S16–S19)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from server.events.types import SaveAudio, SessionEnd, SessionStart
from server.storage.conversation_store import ConversationStore
from server.storage.models import NewMessage

if TYPE_CHECKING:
    from server.memory.base import MemoryProvider
    from server.storage.audio_store import AudioStore

log = logging.getLogger(__name__)


class StorageHandlers:
    """History goes to PostgreSQL; a memory provider that keeps its own copy (redis) gets it too;
    audio goes to S3 when an audio store is configured (S15: otherwise it is skipped, and said so once)."""

    def __init__(
        self,
        store: ConversationStore | None,
        audio: AudioStore | None = None,
        memory: MemoryProvider | None = None,
    ) -> None:
        self.store = store
        self.audio = audio
        self.memory = memory
        self._said_audio_off = False

    async def add_messages(self, messages: Sequence[NewMessage]) -> None:
        if self.store is not None:
            await self.store.add_messages(messages, validated=True)  # the bus validated them at publish
        if self.memory is not None and self.memory.keeps_own_copy:
            await self.memory.add_new_messages(messages)

    async def start_session(self, event: SessionStart) -> None:
        if self.store is not None:
            await self.store.start_session(
                event.session_id,
                event.device_id,
                agent_id=event.agent_id,
                metadata=event.metadata,
                started_at=event.started_at,
            )

    async def end_session(self, event: SessionEnd) -> None:
        if self.store is not None:
            if event.reset:
                await self.store.reset_session(event.session_id)
            else:
                await self.store.end_session(event.session_id, ended_at=event.ended_at)
        if self.memory is not None:
            key = f"{event.device_id}:{event.session_id}"
            await (self.memory.reset(key) if event.reset else self.memory.flush(key))

    async def save_audio(self, event: SaveAudio) -> None:
        if self.audio is None:
            if not self._said_audio_off:
                log.info("audio saving is off (no minio section in the config); audio events are skipped")
                self._said_audio_off = True
            return
        await self.audio.save_opus_packets(
            session_id=event.session_id,
            device_id=event.device_id,
            source=event.source,
            packets=event.packets,
            sample_rate=event.sample_rate,
            channels=event.channels,
            message_id=event.message_id,
            file_id=event.file_id,
            created_at=event.created_at,
            transcription=event.transcription,
        )
