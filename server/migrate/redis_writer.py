"""Writes migrated history into PostgreSQL: sessions, messages with their counters, system prompts.

Per batch (thousands of messages from many keys), in one transaction: upsert the batch's sessions, read
their ``last_seq``, look up which message ids are stored already, number the new messages after each
session's ``last_seq`` in time order, COPY them straight into ``conversation_messages``, and move the session
counters by exactly what was copied. A re-run copies nothing and moves nothing.

If PostgreSQL refuses the batch, it is redone key by key, each key under its own savepoint, and a key that
fails record by record, so a bad record skips that record, not its key (nor the batch).

Every statement here looks rows up by a unique index. The target's statistics are often stale during a
bulk load (or autovacuum is off), and a planner that believes a table is small hashes or merges the whole
of it for every batch — quadratic in the history size. ``pg_target.pin_index_plans`` turns those plans off
for the migration's connection.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from server.migrate.pg_target import on_target
from server.migrate.report import Report

# One record: what the reader produces (``pos`` orders a key's records; the sequence number comes later).
Record = tuple[str, str, str, int, str, str, str | None, str | None, str | None, str | None, datetime]
COPY_COLUMNS = (
    "session_id", "device_id", "message_id", "sequence_num", "role", "content", "multi_content", "tool_calls",
    "tool_call_id", "metadata", "created_at",
)  # fmt: skip

_UPSERT_SESSIONS = """
INSERT INTO conversation_sessions AS s (session_id, device_id, agent_id, started_at, ended_at, status, metadata)
SELECT v.sid, v.dev, (SELECT d.agent_id::text FROM devices d WHERE d.device_code = v.dev), v.first_at, v.last_at,
       'migrated', v.meta::jsonb
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::text[])
     AS v(sid, dev, first_at, last_at, meta)
ON CONFLICT (session_id) DO UPDATE
SET started_at = least(s.started_at, EXCLUDED.started_at),
    ended_at = greatest(s.ended_at, EXCLUDED.ended_at),
    agent_id = coalesce(s.agent_id, EXCLUDED.agent_id),
    updated_at = now()
WHERE EXCLUDED.started_at < s.started_at OR s.ended_at IS NULL OR EXCLUDED.ended_at > s.ended_at
   OR (s.agent_id IS NULL AND EXCLUDED.agent_id IS NOT NULL)
RETURNING (xmax = 0) AS created
"""
_LAST_SEQ = "SELECT session_id, last_seq FROM conversation_sessions WHERE session_id = ANY($1::text[])"
_PRESENT = "SELECT message_id FROM conversation_messages WHERE message_id = ANY($1::text[])"
_COUNT = """
UPDATE conversation_sessions AS s
SET last_seq = greatest(s.last_seq, v.top), message_count = s.message_count + v.n,
    tool_call_count = s.tool_call_count + v.tools, last_message_at = greatest(s.last_message_at, v.last_at),
    updated_at = now()
FROM unnest($1::text[], $2::int8[], $3::int4[], $4::int4[], $5::timestamptz[]) AS v(sid, top, n, tools, last_at)
WHERE s.session_id = v.sid
"""
_UPSERT_PROMPTS = """
INSERT INTO system_prompts AS p (device_id, agent_id, prompt, is_active)
SELECT v.dev, (SELECT d.agent_id::text FROM devices d WHERE d.device_code = v.dev), v.prompt, true
FROM unnest($1::text[], $2::text[]) AS v(dev, prompt)
ON CONFLICT (device_id) DO UPDATE SET prompt = EXCLUDED.prompt, is_active = true
WHERE p.prompt IS DISTINCT FROM EXCLUDED.prompt OR NOT p.is_active
RETURNING (xmax = 0) AS created
"""
_CLASSIFY_PROMPTS = """
SELECT count(*) FILTER (WHERE p.device_id IS NULL) AS new,
       count(*) FILTER (WHERE p.device_id IS NOT NULL AND (p.prompt IS DISTINCT FROM v.prompt OR NOT p.is_active))
           AS changed
FROM unnest($1::text[], $2::text[]) AS v(dev, prompt) LEFT JOIN system_prompts p ON p.device_id = v.dev
"""


@dataclass
class KeySlice:
    """The records of one Redis key in a batch (a key's records may span several batches)."""

    key: str
    locator: str = "score"  # what ``locs`` hold: the member's score (ns) or the list index
    records: list[Record] = field(default_factory=list)
    locs: list[int] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)  # each record's Redis bytes, for the report


@dataclass
class WriteCounts:
    messages_new: int = 0  # inserted (a dry run: would insert)
    messages_present: int = 0  # already stored by an earlier run
    messages_refused: int = 0  # refused by PostgreSQL (also in the report)
    sessions_new: int = 0
    prompts_new: int = 0
    prompts_updated: int = 0
    prompts_unchanged: int = 0


def _sessions(slices: Sequence[KeySlice]) -> list[list[Any]]:
    """Per session in these records: id, device, first and last time, metadata (which key it came from)."""
    found: dict[str, list[Any]] = {}
    for piece in slices:
        for r in piece.records:
            entry = found.get(r[0])
            if entry is None:
                meta = json.dumps({"migrated_from": "redis", "redis_key": piece.key}, ensure_ascii=False)
                found[r[0]] = [r[0], r[1], r[10], r[10], meta]
            else:
                if r[10] < entry[2]:
                    entry[2] = r[10]
                if r[10] > entry[3]:
                    entry[3] = r[10]
    return [list(col) for col in zip(*found.values(), strict=True)] if found else [[], [], [], [], []]


class ConversationWriter:
    def __init__(
        self,
        conn: asyncpg.Connection,
        report: Report,
        *,
        dry_run: bool,
        schema_missing: bool,
        counts: WriteCounts | None = None,
    ) -> None:
        self.conn = conn
        self.report = report
        self.dry_run = dry_run
        self.schema_missing = schema_missing
        self.counts = counts or WriteCounts()  # lanes share one
        # The target held no messages when this run began: a message already there can only be one that the
        # unique index on message_id refuses, and a refused batch is redone key by key with the look-up. So the
        # first try skips looking its ids up (a fifth of the writers' time).
        self.fresh = False

    # ---- messages -------------------------------------------------------------------------------------

    async def write(self, slices: Sequence[KeySlice]) -> None:
        slices = [s for s in slices if s.records]
        if not slices:
            return
        if self.dry_run:
            await on_target(self._classify(slices))
        else:
            await on_target(self._write(slices))

    async def _classify(self, slices: Sequence[KeySlice]) -> None:
        ids = [r[2] for s in slices for r in s.records]
        sessions = _sessions(slices)[0]
        if self.schema_missing:
            present, known = 0, 0
        else:
            present = len(await self.conn.fetch(_PRESENT, ids))
            known = len(await self.conn.fetch(_LAST_SEQ, sessions))
        self.counts.messages_present += present
        self.counts.messages_new += len(ids) - present
        self.counts.sessions_new += len(sessions) - known

    async def _insert(self, slices: Sequence[KeySlice], *, look_up: bool = True) -> tuple[int, int]:
        """(sessions created, messages inserted); the caller holds a transaction or savepoint. ``look_up``:
        leave out the messages already stored (else the unique index refuses them)."""
        columns = _sessions(slices)
        created = sum(1 for r in await self.conn.fetch(_UPSERT_SESSIONS, *columns) if r["created"])
        last = {r["session_id"]: r["last_seq"] for r in await self.conn.fetch(_LAST_SEQ, columns[0])}
        seen: set[str] = set()
        if look_up:
            ids = [r[2] for piece in slices for r in piece.records]
            seen = {r["message_id"] for r in await self.conn.fetch(_PRESENT, ids)}
        rows: list[tuple[Any, ...]] = []
        counters: dict[str, list[Any]] = {}  # session → [top, n, tools, last_at]
        for piece in slices:
            for r in piece.records:
                if r[2] in seen:
                    continue
                seen.add(r[2])  # the same record twice in one batch is stored once
                sid = r[0]
                seq = last[sid] = last[sid] + 1
                rows.append((sid, r[1], r[2], seq, r[4], r[5], r[6], r[7], r[8], r[9] or "{}", r[10]))
                entry = counters.get(sid)
                if entry is None:
                    entry = counters[sid] = [seq, 0, 0, r[10]]
                entry[0] = seq
                entry[1] += 1
                entry[2] += r[7] is not None
                if r[10] > entry[3]:
                    entry[3] = r[10]
        if rows:
            await self.conn.copy_records_to_table("conversation_messages", records=rows, columns=COPY_COLUMNS)
            sids = list(counters)
            await self.conn.execute(_COUNT, sids, *([counters[k][i] for k in sids] for i in range(4)))
        return created, len(rows)

    async def _write(self, slices: Sequence[KeySlice]) -> None:
        total = sum(len(s.records) for s in slices)
        try:
            async with self.conn.transaction():
                created, inserted = await self._insert(slices, look_up=not self.fresh)
            refused = 0
        except asyncpg.PostgresError:
            created = inserted = refused = 0
            async with self.conn.transaction():
                for piece in slices:
                    try:
                        async with self.conn.transaction():  # one savepoint per key
                            c, i = await self._insert([piece])
                    except asyncpg.PostgresError:
                        c, i, r = await self._record_by_record(piece)
                        refused += r
                    created += c
                    inserted += i
        self.counts.sessions_new += created
        self.counts.messages_new += inserted
        self.counts.messages_refused += refused
        self.counts.messages_present += total - inserted - refused

    async def _record_by_record(self, piece: KeySlice) -> tuple[int, int, int]:
        created = inserted = refused = 0
        for record, loc, raw in zip(piece.records, piece.locs, piece.raws, strict=True):
            one = KeySlice(piece.key, piece.locator, [record])
            try:
                async with self.conn.transaction():
                    c, i = await self._insert([one])
            except asyncpg.PostgresError as exc:
                where = {"key": piece.key, piece.locator: loc}
                self.report.skip(f"refused by PostgreSQL: {str(exc).splitlines()[0]}", where, raw)
                refused += 1
                continue
            created += c
            inserted += i
        return created, inserted, refused

    # ---- system prompts -------------------------------------------------------------------------------

    async def write_prompts(self, prompts: Sequence[tuple[str, str]]) -> None:
        if not prompts:
            return
        devices = [p[0] for p in prompts]
        texts = [p[1] for p in prompts]
        if self.dry_run:
            if self.schema_missing:
                self.counts.prompts_new += len(prompts)
                return
            rec = await on_target(self.conn.fetchrow(_CLASSIFY_PROMPTS, devices, texts))
            new, changed = rec["new"], rec["changed"]
        else:

            async def upsert() -> list[asyncpg.Record]:
                async with self.conn.transaction():
                    return await self.conn.fetch(_UPSERT_PROMPTS, devices, texts)

            rows = await on_target(upsert())
            new = sum(1 for r in rows if r["created"])
            changed = len(rows) - new
        self.counts.prompts_new += new
        self.counts.prompts_updated += changed
        self.counts.prompts_unchanged += len(prompts) - new - changed
