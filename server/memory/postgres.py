"""The "postgres" memory provider (S7): conversation memory read from the history the ConversationStore keeps.

Differences from the Go pg_memory, on purpose:

* a session is one device connection, so the device's previous session warms a new one through
  ``get_context`` (a one-line summary) instead of one endless session per agent;
* ``reset`` keeps the history for support staff (the store moves the session's context start) instead of
  deleting rows, and it forgets the whole *device*: the previous sessions are reset as well, otherwise the
  next connection's ``get_context`` and every ``search`` would bring back what the user asked to forget;
* ``search`` looks for the utterance's distinctive terms, escaped, instead of ``ILIKE '%<utterance>%'``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from server.memory.base import (
    KeyLike,
    MemoryKey,
    MemoryMessage,
    MemoryProvider,
    as_key,
    format_memory_line,
    is_echo,
    memory_terms,
)
from server.storage.conversation_store import ConversationStore
from server.storage.errors import InvalidInput
from server.storage.models import NewMessage, SearchHit

# How many of the previous session's messages the get_context summary looks at.
CONTEXT_MESSAGES = 6
CONTEXT_MESSAGE_CHARS = 120
# Pages of hits fetched per term while skipping forgotten messages and the echo of the query.
_MAX_SEARCH_PAGES = 5


def _new_message(key: MemoryKey, message: MemoryMessage) -> NewMessage:
    # The history table has no "name" column; it travels in metadata and comes back from there.
    extra: dict[str, Any] = {}
    if message.message_id:
        extra["message_id"] = message.message_id
    return NewMessage(
        session_id=key.session_id,
        device_id=key.device_id,
        role=message.role,  # type: ignore[arg-type]  # the store validates it
        content=message.content,
        multi_content=message.multi_content,
        tool_calls=message.tool_calls,
        tool_call_id=message.tool_call_id,
        metadata={"name": message.name} if message.name else None,
        created_at=message.created_at,
        agent_id=None,  # a memory key does not say which agent; the session row may already know it
        **extra,
    )


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class PostgresMemory(MemoryProvider):
    """Memory on top of :class:`ConversationStore`. Writes are durable when ``add_message`` returns, so
    ``flush`` has nothing to do; the pool belongs to the caller, so ``close`` does not close it.

    Search strategy: the query is a whole spoken utterance ("what was the restaurant I told you about?").
    ``store.search_messages`` ANDs every whitespace-separated word, so passing the utterance would demand
    that one old message contain all of its words — nearly always nothing — and more than eight words is
    an error. One quoted phrase would only find verbatim repeats, the reference's behaviour. So each
    distinctive term (:func:`memory_terms`: stop words and short words dropped, longest four kept) is
    searched on its own — one escaped, trigram-indexed query per term, scoped to the device and the time
    window — and the hits are merged newest first. A hit on any term is a memory worth showing the LLM.
    """

    name: ClassVar[str] = "postgres"
    keeps_own_copy: ClassVar[bool] = False

    def __init__(self, store: ConversationStore, *, search_days: int = 180) -> None:
        if search_days < 0:
            raise InvalidInput(f"search_days must be >= 0 (0 = no limit), got {search_days}")
        self.store = store
        self.search_days = search_days

    async def add_message(self, key: KeyLike, message: MemoryMessage) -> None:
        await self.add_messages(key, [message])

    async def add_messages(self, key: KeyLike, messages: Sequence[MemoryMessage]) -> None:
        key = as_key(key)
        await self.store.add_messages([_new_message(key, m) for m in messages])

    async def get_messages(self, key: KeyLike, n: int) -> list[MemoryMessage]:
        key = as_key(key)
        if n <= 0:
            return []
        return [MemoryMessage.from_message(row) for row in await self.store.last_messages(key.session_id, n)]

    async def get_context(self, key: KeyLike, max_tokens: int = 500) -> str:
        """One line summing up the device's previous session, only while the current one is still empty
        (afterwards ``get_messages`` carries the context). Bounded by ``max_tokens`` counted as characters,
        which over-estimates tokens for both Chinese and English."""
        key = as_key(key)
        if max_tokens <= 0 or await self.store.last_messages(key.session_id, 1):
            return ""
        previous = await self.store.device_context(key.device_id, CONTEXT_MESSAGES, exclude_session=key.session_id)
        turns = [m for m in previous if m.role in ("user", "assistant") and m.content.strip()]
        if not turns:
            return ""
        head = f"Previous conversation ({turns[-1].created_at.astimezone().strftime('%Y-%m-%d %H:%M')}): "
        parts: list[str] = []
        used = len(head)
        for message in reversed(turns):  # newest first, so the budget keeps the latest turns
            part = f"{message.role}: {_clip(message.content, CONTEXT_MESSAGE_CHARS)}"
            if used + len(part) + 3 > max_tokens:
                break
            parts.append(part)
            used += len(part) + 3
        return head + " / ".join(reversed(parts)) if parts else ""

    async def search(self, key: KeyLike, query: str, top_k: int = 10, time_range_days: int | None = None) -> list[str]:
        key = as_key(key)
        terms = memory_terms(query)
        if top_k <= 0 or not terms:
            return []
        days = self.search_days if time_range_days is None else time_range_days
        if days < 0:
            raise InvalidInput(f"time_range_days must be >= 0 (0 = no limit), got {days}")
        since = datetime.now(UTC) - timedelta(days=days) if days else None
        floors: dict[str, int] = {}
        found: dict[int, SearchHit] = {}
        for term in terms:
            kept = 0
            before_id: int | None = None
            for _ in range(_MAX_SEARCH_PAGES):
                hits = await self.store.search_messages(
                    term, device_id=key.device_id, since=since, limit=top_k, before_id=before_id
                )
                await self._load_floors(floors, (h.session_id for h in hits))
                for hit in hits:
                    if hit.sequence_num > floors[hit.session_id] and not is_echo(hit.role, hit.content, query):
                        found[hit.id] = hit
                        kept += 1
                if kept >= top_k or len(hits) < top_k:
                    break
                before_id = hits[-1].id
        newest = sorted(found.values(), key=lambda h: (h.created_at, h.id), reverse=True)[:top_k]
        return [format_memory_line(h.created_at, h.role, h.content) for h in newest]

    async def _load_floors(self, floors: dict[str, int], session_ids: Iterable[str]) -> None:
        """Each session's context start: messages at or below it were forgotten by a reset.

        ConversationStore.search_messages cannot apply it itself (it searches history, for support staff),
        so it is read here — a read of one column, not a search.
        """
        missing = sorted({s for s in session_ids if s not in floors})
        if not missing:
            return
        rows = await self.store.pool.fetch(
            "SELECT session_id, context_start_seq FROM conversation_sessions WHERE session_id = ANY($1::text[])",
            missing,
        )
        floors.update({s: 0 for s in missing})
        floors.update({r["session_id"]: r["context_start_seq"] for r in rows})

    async def reset(self, key: KeyLike) -> None:
        """Forget this session's and the device's earlier context (history stays for support staff)."""
        key = as_key(key)
        await self.store.forget_device_context(key.device_id, key.session_id)

    async def flush(self, key: KeyLike) -> None:
        as_key(key)  # nothing buffered: every add is committed before it returns
