"""ConversationStore: sessions, messages, system prompts and audio rows in PostgreSQL (S2–S5).

Sequence numbers are handed out from a counter on the session row, under that row's lock, in the
same transaction as the insert — never ``MAX(sequence_num)+1`` — and UNIQUE (session_id, sequence_num)
backs it. Adding is idempotent by message_id. Batches lock their sessions in session_id order so
concurrent writers (several servers) cannot deadlock.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import asyncpg

from server.storage.errors import InvalidInput, NotFound
from server.storage.models import (
    MAX_DEVICE_ID,
    MAX_SESSION_ID,
    STATUSES,
    AddResult,
    AudioFile,
    NewMessage,
    Page,
    SearchHit,
    SessionCursor,
    SessionFilter,
    SessionInfo,
    StoredMessage,
    check_id,
)
from server.storage.search import like_pattern, match_spans, parse_terms

_MESSAGE_COLUMNS = (
    "id, session_id, device_id, message_id, sequence_num, role, content, multi_content, tool_calls, "
    "tool_call_id, audio_file_id, metadata, created_at"
)
_SESSION_COLUMNS = (
    "id, session_id, device_id, agent_id, user_id, started_at, ended_at, status, message_count, "
    "audio_count, tool_call_count, last_message_at, metadata"
)
_AUDIO_COLUMNS = (
    "file_id, session_id, message_id, device_id, bucket_name, object_key, file_type, file_size, duration_ms, "
    "sample_rate, channels, source_type, transcription, metadata, created_at"
)

_ENSURE_SESSIONS = """
INSERT INTO conversation_sessions (session_id, device_id, agent_id, started_at)
SELECT s, d, a, coalesce(t, now()) FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) AS v(s, d, a, t)
ON CONFLICT (session_id) DO NOTHING
"""
# Takes each session's row lock (in session_id order, so concurrent writers cannot deadlock) and hands out
# its sequence numbers and counters in the same statement: one new row version per session per batch.
_ALLOCATE = """
UPDATE conversation_sessions AS s
SET last_seq = s.last_seq + v.n,
    message_count = s.message_count + v.n,
    tool_call_count = s.tool_call_count + v.tools,
    last_message_at = greatest(s.last_message_at, v.last_at),
    updated_at = now()
FROM (SELECT * FROM unnest($1::text[], $2::int4[], $3::int4[], $4::timestamptz[]) AS u(sid, n, tools, last_at)
      ORDER BY sid) AS v
WHERE s.session_id = v.sid
RETURNING s.session_id, s.last_seq
"""
_INSERT_MESSAGES = """
INSERT INTO conversation_messages (session_id, device_id, message_id, sequence_num, role, content,
                                   multi_content, tool_calls, tool_call_id, metadata, created_at)
SELECT s, d, m, q, r, c, mc::jsonb, tc::jsonb, tci, coalesce(md::jsonb, '{}'::jsonb), coalesce(ca, $12)
FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[], $7::text[], $8::text[],
            $9::text[], $10::text[], $11::timestamptz[]) AS v(s, d, m, q, r, c, mc, tc, tci, md, ca)
ON CONFLICT (message_id) DO NOTHING
RETURNING message_id
"""
# A re-sent message (already stored) was counted by _ALLOCATE; take it back out.
_UNCOUNT = """
UPDATE conversation_sessions AS s
SET message_count = s.message_count - v.n, tool_call_count = s.tool_call_count - v.tools
FROM unnest($1::text[], $2::int4[], $3::int4[]) AS v(sid, n, tools) WHERE s.session_id = v.sid
"""


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _message(row: asyncpg.Record) -> StoredMessage:
    return StoredMessage(**dict(row))


def _session(row: asyncpg.Record) -> SessionInfo:
    return SessionInfo(**dict(row))


def _audio(row: asyncpg.Record) -> AudioFile:
    return AudioFile(**dict(row))


@dataclass(frozen=True, slots=True)
class NewAudioFile:
    file_id: str
    session_id: str
    device_id: str
    bucket_name: str
    object_key: str
    file_type: str
    file_size: int
    duration_ms: int
    sample_rate: int
    channels: int
    source_type: str
    message_id: str | None = None
    transcription: str | None = None
    metadata: dict[str, Any] | None = None


class ConversationStore:
    """All conversation reads and writes; one instance per asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # ---- sessions -------------------------------------------------------------------------------

    async def start_session(
        self,
        session_id: str,
        device_id: str,
        *,
        agent_id: str | None = None,
        user_id: int | None = None,
        metadata: dict[str, Any] | None = None,
        started_at: datetime | None = None,
    ) -> SessionInfo:
        """Create the session (status active); starting an existing one returns it unchanged."""
        check_id("session_id", session_id, MAX_SESSION_ID)
        check_id("device_id", device_id, MAX_DEVICE_ID)
        row = await self.pool.fetchrow(
            f"""INSERT INTO conversation_sessions (session_id, device_id, agent_id, user_id, metadata, started_at)
                VALUES ($1, $2, $3, $4, coalesce($5::jsonb, '{{}}'::jsonb), coalesce($6, now()))
                ON CONFLICT (session_id) DO NOTHING RETURNING {_SESSION_COLUMNS}""",
            session_id,
            device_id,
            agent_id,
            user_id,
            metadata,
            started_at,
        )
        if row is None:
            existing = await self.get_session(session_id)
            if existing.device_id != device_id:
                raise InvalidInput(
                    f"session {session_id!r} belongs to device {existing.device_id!r}, not {device_id!r}"
                )
            return existing
        return _session(row)

    async def end_session(self, session_id: str, *, ended_at: datetime | None = None) -> bool:
        """Mark an active session ended (S19); False when it was not active (already ended or reset)."""
        result = await self.pool.execute(
            """UPDATE conversation_sessions
               SET status = 'ended', ended_at = greatest(started_at, coalesce($2, now())), updated_at = now()
               WHERE session_id = $1 AND status = 'active'""",
            session_id,
            ended_at,
        )
        return result.endswith(" 1")

    async def reset_session(self, session_id: str) -> bool:
        """Forget the session's context (memory reset). Its history stays for support staff to read."""
        result = await self.pool.execute(
            """UPDATE conversation_sessions
               SET status = 'reset', ended_at = coalesce(ended_at, greatest(started_at, now())),
                   context_start_seq = last_seq, updated_at = now()
               WHERE session_id = $1""",
            session_id,
        )
        return result.endswith(" 1")

    async def forget_device_context(self, device_id: str, session_id: str) -> None:
        """A memory reset: this session becomes 'reset' and none of the device's earlier messages warm the
        LLM context again. Earlier sessions keep their status; all history stays readable."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """UPDATE conversation_sessions SET context_start_seq = last_seq, updated_at = now()
                   WHERE device_id = $1 AND last_seq > context_start_seq""",
                device_id,
            )
            await conn.execute(
                """UPDATE conversation_sessions
                   SET status = 'reset', ended_at = coalesce(ended_at, greatest(started_at, now())), updated_at = now()
                   WHERE session_id = $1""",
                session_id,
            )

    async def get_session(self, session_id: str) -> SessionInfo:
        row = await self.pool.fetchrow(
            f"SELECT {_SESSION_COLUMNS} FROM conversation_sessions WHERE session_id = $1", session_id
        )
        if row is None:
            raise NotFound(f"no session {session_id!r}")
        return _session(row)

    # ---- messages -------------------------------------------------------------------------------

    async def add_message(self, message: NewMessage) -> AddResult:
        return (await self.add_messages([message]))[0]

    async def add_messages(self, messages: Sequence[NewMessage], *, validated: bool = False) -> list[AddResult]:
        """Store messages in the given order (per session), atomically; results in input order.

        ``validated``: the caller (the event bus) already ran ``NewMessage.validate`` on each.
        """
        if not messages:
            return []
        if not validated:
            for msg in messages:
                msg.validate()
        async with self.pool.acquire() as conn, conn.transaction():
            return await self._add_messages(conn, messages)

    async def _add_messages(self, conn: asyncpg.Connection, messages: Sequence[NewMessage]) -> list[AddResult]:
        first: dict[str, NewMessage] = {}
        for msg in messages:
            first.setdefault(msg.session_id, msg)
        sessions = sorted(first)
        await conn.execute(
            _ENSURE_SESSIONS,
            sessions,
            [first[s].device_id for s in sessions],
            [first[s].agent_id for s in sessions],
            [first[s].created_at for s in sessions],
        )
        # Plan every message; ids already stored are found by the INSERT's ON CONFLICT rather than by a
        # look-up first (re-sends are rare; a re-sent message only leaves a gap in the sequence numbers).
        fresh: list[NewMessage] = []
        planned: dict[str, NewMessage] = {}
        stats: dict[str, list[Any]] = {s: [0, 0, None] for s in sessions}
        now = datetime.now(UTC)
        for msg in messages:
            if msg.message_id in planned:
                continue
            planned[msg.message_id] = msg
            fresh.append(msg)
            entry = stats[msg.session_id]
            entry[0] += 1
            entry[1] += 1 if msg.tool_calls is not None else 0
            stamp = msg.created_at or now
            entry[2] = stamp if entry[2] is None else max(entry[2], stamp)
        allocated = {
            r["session_id"]: r["last_seq"]
            for r in await conn.fetch(
                _ALLOCATE, sessions, [stats[s][0] for s in sessions], [stats[s][1] for s in sessions],
                [stats[s][2] for s in sessions],
            )
        }  # fmt: skip
        next_seq = {s: allocated[s] - stats[s][0] for s in sessions}
        seqs: list[int] = []
        seq_of: dict[str, int] = {}
        for msg in fresh:
            next_seq[msg.session_id] += 1
            seqs.append(next_seq[msg.session_id])
            seq_of[msg.message_id] = next_seq[msg.session_id]
        inserted = {
            r["message_id"]
            for r in await conn.fetch(
                _INSERT_MESSAGES,
                [m.session_id for m in fresh],
                [m.device_id for m in fresh],
                [m.message_id for m in fresh],
                seqs,
                [m.role for m in fresh],
                [m.content for m in fresh],
                [_json(m.multi_content) for m in fresh],
                [_json(m.tool_calls) for m in fresh],
                [m.tool_call_id for m in fresh],
                [_json(m.metadata) for m in fresh],
                [m.created_at for m in fresh],
                now,
            )
        }
        existing = {}
        if len(inserted) < len(fresh):
            resent = [m for m in fresh if m.message_id not in inserted]
            rows = await conn.fetch(
                "SELECT message_id, session_id, sequence_num FROM conversation_messages "
                "WHERE message_id = ANY($1::text[])",
                [m.message_id for m in resent],
            )
            existing = {r["message_id"]: (r["session_id"], r["sequence_num"]) for r in rows}
            back: dict[str, list[int]] = {}
            for m in resent:
                entry = back.setdefault(m.session_id, [0, 0])
                entry[0] += 1
                entry[1] += 1 if m.tool_calls is not None else 0
            keys = sorted(back)
            await conn.execute(_UNCOUNT, keys, [back[k][0] for k in keys], [back[k][1] for k in keys])
        results = []
        for msg in messages:
            if msg.message_id in existing:
                session_id, seq = existing[msg.message_id]
                results.append(AddResult(msg.message_id, session_id, seq, False))
            else:
                stored = planned[msg.message_id]
                results.append(AddResult(msg.message_id, msg.session_id, seq_of[msg.message_id], created=stored is msg))
        return results

    async def last_messages(self, session_id: str, n: int, *, context_only: bool = True) -> list[StoredMessage]:
        """The last ``n`` messages of a session, oldest → newest. ``context_only`` skips what a reset forgot."""
        if n <= 0:
            return []
        floor = "(SELECT context_start_seq FROM conversation_sessions WHERE session_id = $1)" if context_only else "0"
        rows = await self.pool.fetch(
            f"""SELECT {_MESSAGE_COLUMNS} FROM conversation_messages
                WHERE session_id = $1 AND sequence_num > coalesce({floor}, 0)
                ORDER BY sequence_num DESC LIMIT $2""",
            session_id,
            n,
        )
        return [_message(r) for r in reversed(rows)]

    async def device_context(
        self, device_id: str, n: int, *, exclude_session: str | None = None
    ) -> list[StoredMessage]:
        """The last ``n`` messages of the device's most recent other session (warms a reconnect's context)."""
        row = await self.pool.fetchrow(
            """SELECT session_id FROM conversation_sessions
               WHERE device_id = $1 AND session_id IS DISTINCT FROM $2 AND last_seq > context_start_seq
               ORDER BY started_at DESC, id DESC LIMIT 1""",
            device_id,
            exclude_session,
        )
        return [] if row is None else await self.last_messages(row["session_id"], n)

    async def timeline(self, session_id: str, *, after_seq: int = 0, limit: int | None = None) -> list[StoredMessage]:
        """A session's messages in order; page with ``after_seq`` = the last sequence_num seen."""
        rows = await self.pool.fetch(
            f"""SELECT {_MESSAGE_COLUMNS} FROM conversation_messages
                WHERE session_id = $1 AND sequence_num > $2 ORDER BY sequence_num LIMIT $3""",
            session_id,
            after_seq,
            limit,
        )
        return [_message(r) for r in rows]

    async def get_message(self, message_id: str) -> StoredMessage:
        row = await self.pool.fetchrow(
            f"SELECT {_MESSAGE_COLUMNS} FROM conversation_messages WHERE message_id = $1", message_id
        )
        if row is None:
            raise NotFound(f"no message {message_id!r}")
        return _message(row)

    # ---- browsing -------------------------------------------------------------------------------

    async def list_sessions(
        self, filters: SessionFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> Page[SessionInfo]:
        """Newest-first sessions, keyset-paged on (started_at, id): every page costs the same."""
        f = filters or SessionFilter()
        if not 1 <= limit <= 1000:
            raise InvalidInput(f"limit must be 1..1000, got {limit}")
        if f.status is not None and f.status not in STATUSES:
            raise InvalidInput(f"status must be one of {sorted(STATUSES)}, got {f.status!r}")
        where: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if f.device_id is not None:
            where.append(f"s.device_id = {arg(f.device_id)}")
        if f.agent_id is not None:
            where.append(f"s.agent_id = {arg(f.agent_id)}")
        if f.status is not None:
            where.append(f"s.status = {arg(f.status)}")
        if f.since is not None:
            where.append(f"s.started_at >= {arg(f.since)}")
        if f.until is not None:
            where.append(f"s.started_at < {arg(f.until)}")
        if f.has_audio is not None:
            where.append("s.audio_count > 0" if f.has_audio else "s.audio_count = 0")
        if f.has_tool_calls is not None:
            where.append("s.tool_call_count > 0" if f.has_tool_calls else "s.tool_call_count = 0")
        if f.text:
            conds = " AND ".join(f"m.content ILIKE {arg(like_pattern(t))}" for t in parse_terms(f.text))
            where.append(
                f"EXISTS (SELECT 1 FROM conversation_messages m WHERE m.session_id = s.session_id AND {conds})"
            )
        if cursor is not None:
            pos = SessionCursor.decode(cursor)
            where.append(f"(s.started_at, s.id) < ({arg(pos.started_at)}, {arg(pos.id)})")
        sql = f"SELECT {', '.join('s.' + c for c in _SESSION_COLUMNS.split(', '))} FROM conversation_sessions s"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY s.started_at DESC, s.id DESC LIMIT {arg(limit + 1)}"
        rows = await self.pool.fetch(sql, *args)
        items = [_session(r) for r in rows[:limit]]
        next_cursor = SessionCursor(items[-1].started_at, items[-1].id).encode() if len(rows) > limit else None
        return Page(items, next_cursor)

    async def search_messages(
        self,
        text: str,
        *,
        device_id: str | None = None,
        session_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[SearchHit]:
        """Messages containing every term of ``text`` (Chinese or English), newest first.

        Page with ``before_id`` = the last hit's id.
        """
        terms = parse_terms(text)
        args: list[Any] = [like_pattern(t) for t in terms]
        where = [f"content ILIKE ${i + 1}" for i in range(len(terms))]
        for column, op, value in (
            ("device_id", "=", device_id),
            ("session_id", "=", session_id),
            ("created_at", ">=", since),
            ("created_at", "<", until),
            ("id", "<", before_id),
        ):
            if value is not None:
                args.append(value)
                where.append(f"{column} {op} ${len(args)}")
        args.append(limit)
        rows = await self.pool.fetch(
            f"""SELECT id, session_id, device_id, message_id, sequence_num, role, content, created_at
                FROM conversation_messages WHERE {" AND ".join(where)} ORDER BY id DESC LIMIT ${len(args)}""",
            *args,
        )
        return [SearchHit(**dict(r), spans=match_spans(r["content"], terms)) for r in rows]

    async def messages_per_day(
        self, since: datetime, until: datetime, *, device_id: str | None = None, tz: str = "UTC"
    ) -> list[tuple[date, int]]:
        """Message counts per calendar day in ``tz`` (S29), days without messages omitted."""
        rows = await self.pool.fetch(
            """SELECT (created_at AT TIME ZONE $3)::date AS day, count(*) AS n FROM conversation_messages
               WHERE created_at >= $1 AND created_at < $2 AND ($4::text IS NULL OR device_id = $4)
               GROUP BY day ORDER BY day""",
            since,
            until,
            tz,
            device_id,
        )
        return [(r["day"], r["n"]) for r in rows]

    # ---- system prompts (S4) --------------------------------------------------------------------

    async def get_system_prompt(self, device_id: str) -> str | None:
        return await self.pool.fetchval(
            "SELECT prompt FROM system_prompts WHERE device_id = $1 AND is_active", device_id
        )

    async def set_system_prompt(self, device_id: str, prompt: str, *, agent_id: str | None = None) -> None:
        check_id("device_id", device_id, MAX_DEVICE_ID)
        if "\x00" in prompt:
            raise InvalidInput("prompt contains a NUL character")
        await self.pool.execute(
            """INSERT INTO system_prompts (device_id, agent_id, prompt, is_active) VALUES ($1, $2, $3, true)
               ON CONFLICT (device_id) DO UPDATE
               SET prompt = EXCLUDED.prompt, agent_id = coalesce(EXCLUDED.agent_id, system_prompts.agent_id),
                   is_active = true""",
            device_id,
            agent_id,
            prompt,
        )

    # ---- audio rows (S5) ------------------------------------------------------------------------

    async def add_audio_file(self, audio: NewAudioFile) -> AudioFile:
        """Insert the row and link its message (``audio_file_id``) in one transaction; idempotent by file_id."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_ENSURE_SESSIONS, [audio.session_id], [audio.device_id], [None], [None])
            row = await conn.fetchrow(
                f"""INSERT INTO audio_files (file_id, session_id, message_id, device_id, bucket_name, object_key,
                        file_type, file_size, duration_ms, sample_rate, channels, source_type, transcription, metadata)
                    VALUES ($1, $2, (SELECT message_id FROM conversation_messages WHERE message_id = $3), $4, $5, $6,
                            $7, $8, $9, $10, $11, $12, $13, coalesce($14::jsonb, '{{}}'::jsonb))
                    ON CONFLICT (file_id) DO NOTHING RETURNING {_AUDIO_COLUMNS}""",
                audio.file_id,
                audio.session_id,
                audio.message_id,
                audio.device_id,
                audio.bucket_name,
                audio.object_key,
                audio.file_type,
                audio.file_size,
                audio.duration_ms,
                audio.sample_rate,
                audio.channels,
                audio.source_type,
                audio.transcription,
                audio.metadata,
            )
            if row is None:
                return await self.get_audio_file(audio.file_id, conn=conn)
            if row["message_id"] is not None:
                await conn.execute(
                    "UPDATE conversation_messages SET audio_file_id = $1 WHERE message_id = $2",
                    audio.file_id,
                    row["message_id"],
                )
            await conn.execute(
                "UPDATE conversation_sessions SET audio_count = audio_count + 1, updated_at = now() "
                "WHERE session_id = $1",
                audio.session_id,
            )
            return _audio(row)

    async def get_audio_file(self, file_id: str, *, conn: asyncpg.Connection | None = None) -> AudioFile:
        row = await (conn or self.pool).fetchrow(
            f"SELECT {_AUDIO_COLUMNS} FROM audio_files WHERE file_id = $1", file_id
        )
        if row is None:
            raise NotFound(f"no audio file {file_id!r}")
        return _audio(row)

    async def list_audio_files(
        self,
        *,
        session_id: str | None = None,
        device_id: str | None = None,
        day: date | None = None,
        message_id: str | None = None,
        limit: int = 1000,
    ) -> list[AudioFile]:
        """Audio rows by session, device, UTC day or message, oldest first."""
        if session_id is None and device_id is None and message_id is None:
            raise InvalidInput("give a session_id, device_id or message_id to list audio")
        rows = await self.pool.fetch(
            f"""SELECT {_AUDIO_COLUMNS} FROM audio_files
                WHERE ($1::text IS NULL OR session_id = $1) AND ($2::text IS NULL OR device_id = $2)
                  AND ($3::date IS NULL OR (created_at >= $3::date::timestamp AT TIME ZONE 'UTC'
                                            AND created_at < ($3::date + 1)::timestamp AT TIME ZONE 'UTC'))
                  AND ($4::text IS NULL OR message_id = $4)
                ORDER BY created_at, file_id LIMIT $5""",
            session_id,
            device_id,
            day,
            message_id,
            limit,
        )
        return [_audio(r) for r in rows]

    async def delete_audio_file_row(self, file_id: str) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("DELETE FROM audio_files WHERE file_id = $1 RETURNING session_id", file_id)
            if row is None:
                return False
            await conn.execute(
                "UPDATE conversation_sessions SET audio_count = greatest(audio_count - 1, 0) WHERE session_id = $1",
                row["session_id"],
            )
            return True
