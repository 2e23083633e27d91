"""The session list's view state: filters, full-text search and keyset paging over ConversationStore."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta

from server.storage.conversation_store import ConversationStore
from server.storage.models import SearchHit, SessionFilter, SessionInfo

PAGE_SIZE = 200


@dataclass(frozen=True, slots=True)
class SessionQuery:
    """What the user asked for in the filter bar. Empty strings mean "any"."""

    device: str = ""
    agent: str = ""
    status: str = ""
    since: date | None = None  # local calendar days, inclusive
    until: date | None = None
    has_audio: bool | None = None
    has_tool_calls: bool | None = None
    text: str = ""

    def to_filter(self) -> SessionFilter:
        return SessionFilter(
            device_id=self.device.strip() or None,
            agent_id=self.agent.strip() or None,
            status=self.status or None,  # type: ignore[arg-type]
            since=_local_day_start(self.since),
            until=_local_day_start(self.until + timedelta(days=1)) if self.until else None,
            has_audio=self.has_audio,
            has_tool_calls=self.has_tool_calls,
            text=self.text.strip() or None,
        )

    def with_(self, **changes: object) -> SessionQuery:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def is_empty(self) -> bool:
        return self == SessionQuery()


def _local_day_start(day: date | None) -> datetime | None:
    if day is None:
        return None
    return datetime.combine(day, time.min).astimezone().astimezone(UTC)


class SessionPager:
    """Pages of one query, newest first; every page costs the same (keyset on started_at, id)."""

    def __init__(self, store: ConversationStore, query: SessionQuery, page_size: int = PAGE_SIZE) -> None:
        self.store = store
        self.query = query
        self.page_size = page_size
        self._cursor: str | None = None
        self.exhausted = False
        self.loaded = 0

    async def next_page(self) -> list[SessionInfo]:
        if self.exhausted:
            return []
        page = await self.store.list_sessions(self.query.to_filter(), limit=self.page_size, cursor=self._cursor)
        self._cursor = page.next_cursor
        self.exhausted = page.next_cursor is None
        self.loaded += len(page.items)
        return page.items

    async def newer_than(self, newest: SessionInfo | None) -> list[SessionInfo]:
        """Sessions that started after ``newest`` (new sessions appearing live), newest first."""
        head = await self.store.list_sessions(self.query.to_filter(), limit=self.page_size)
        if newest is None:
            return head.items
        return [s for s in head.items if (s.started_at, s.id) > (newest.started_at, newest.id)]


async def search_hits(store: ConversationStore, query: SessionQuery, limit: int = 50) -> list[SearchHit]:
    """The messages behind a full-text query (with highlight spans), newest first."""
    if not query.text.strip():
        return []
    f = query.to_filter()
    return await store.search_messages(query.text, device_id=f.device_id, since=f.since, until=f.until, limit=limit)
