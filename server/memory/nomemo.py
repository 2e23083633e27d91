"""The "nomemo" memory provider: remembers nothing (history is still written by the ConversationStore)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from server.memory.base import KeyLike, MemoryMessage, MemoryProvider, as_key


class NoMemory(MemoryProvider):
    """Accepts every call, stores nothing, returns empty results. Keys are still checked, so a caller's
    malformed key fails here as it would with a real provider."""

    name: ClassVar[str] = "nomemo"
    keeps_own_copy: ClassVar[bool] = False

    async def add_message(self, key: KeyLike, message: MemoryMessage) -> None:
        as_key(key)

    async def add_messages(self, key: KeyLike, messages: Sequence[MemoryMessage]) -> None:
        as_key(key)

    async def get_messages(self, key: KeyLike, n: int) -> list[MemoryMessage]:
        as_key(key)
        return []

    async def get_context(self, key: KeyLike, max_tokens: int = 500) -> str:
        as_key(key)
        return ""

    async def search(self, key: KeyLike, query: str, top_k: int = 10, time_range_days: int | None = None) -> list[str]:
        as_key(key)
        return []

    async def reset(self, key: KeyLike) -> None:
        as_key(key)
