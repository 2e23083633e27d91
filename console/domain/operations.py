"""Operations on stored conversations: delete a session or only its audio (recorded in the session's
metadata), the retention policy with a dry-run preview, and the dashboard figures."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from server.storage.audio_store import AudioStore
from server.storage.conversation_store import ConversationStore
from server.storage.retention import RetentionJob, RetentionReport


def _who() -> str:
    return os.environ.get("USER") or os.environ.get("USERNAME") or "console"


async def delete_audio(store: ConversationStore, audio: AudioStore | None, session_id: str) -> int:
    """Remove the session's recordings (objects, then rows); the session remembers who did it and when."""
    rows = await store.list_audio_files(session_id=session_id, limit=100_000)
    if rows and audio is None:
        raise RuntimeError("audio storage (S3) is not connected: recordings cannot be deleted")
    for row in rows:
        assert audio is not None
        await audio.delete(row.file_id)
    await _record(store, session_id, "audio_deleted", {"files": len(rows)})
    return len(rows)


async def delete_session(store: ConversationStore, audio: AudioStore | None, session_id: str) -> int:
    """Remove the session's messages and recordings. The session row stays, empty, with the deletion
    recorded in its metadata, so support staff can see that (and when, and by whom) it was removed."""
    files = await delete_audio(store, audio, session_id)
    async with store.pool.acquire() as conn, conn.transaction():
        removed = await conn.fetchval(
            "WITH d AS (DELETE FROM conversation_messages WHERE session_id = $1 RETURNING 1) SELECT count(*) FROM d",
            session_id,
        )
        await conn.execute(
            "UPDATE conversation_sessions SET message_count = 0, tool_call_count = 0, audio_count = 0, "
            "updated_at = now() WHERE session_id = $1",
            session_id,
        )
    await _record(store, session_id, "deleted", {"messages": removed, "files": files})
    return int(removed)


async def _record(store: ConversationStore, session_id: str, key: str, detail: dict[str, object]) -> None:
    entry = {"at": datetime.now(UTC).isoformat(), "by": _who(), **detail}
    await store.pool.execute(
        "UPDATE conversation_sessions SET metadata = metadata || jsonb_build_object($2::text, $3::jsonb), "
        "updated_at = now() WHERE session_id = $1",
        session_id,
        key,
        entry,
    )


async def retention_preview(store: ConversationStore, audio: AudioStore | None, days: int) -> RetentionReport:
    return await RetentionJob(store.pool, audio, days).run(dry_run=True)


async def retention_run(store: ConversationStore, audio: AudioStore | None, days: int) -> RetentionReport:
    return await RetentionJob(store.pool, audio, days).run(dry_run=False)


@dataclass(frozen=True, slots=True)
class Dashboard:
    per_day: list[tuple[date, int]]
    busiest: list[tuple[str, int, int]]  # device, sessions, messages
    sessions_total: int
    messages_total: int


async def dashboard(store: ConversationStore, days: int = 14) -> Dashboard:
    now = datetime.now(UTC)
    since = now - timedelta(days=days)
    per_day = await store.messages_per_day(since, now + timedelta(days=1))
    rows = await store.pool.fetch(
        """SELECT device_id, count(*) AS sessions, sum(message_count) AS messages FROM conversation_sessions
           WHERE started_at >= $1 GROUP BY device_id ORDER BY messages DESC, sessions DESC LIMIT 10""",
        since,
    )
    # Estimates from the planner's statistics: exact counts of millions of rows would take seconds.
    totals = await store.pool.fetch(
        "SELECT relname, reltuples::bigint AS n FROM pg_class "
        "WHERE relname IN ('conversation_sessions', 'conversation_messages')"
    )
    est = {r["relname"]: max(0, r["n"]) for r in totals}
    return Dashboard(
        per_day,
        [(r["device_id"], r["sessions"], int(r["messages"] or 0)) for r in rows],
        est.get("conversation_sessions", 0),
        est.get("conversation_messages", 0),
    )
