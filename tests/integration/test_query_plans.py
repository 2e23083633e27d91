"""Every read the store makes is served by an index: the real statements, captured and EXPLAINed."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from server.config import DatabaseSettings, PoolSettings
from server.storage.conversation_store import ConversationStore, NewAudioFile
from server.storage.db import create_pool
from server.storage.models import NewMessage, SessionFilter
from server.storage.retention import RetentionJob

BIG_TABLES = ("conversation_messages", "conversation_sessions", "audio_files")


def _scans(plan: dict[str, Any]) -> list[tuple[str, str]]:
    found = [(plan["Node Type"], plan.get("Relation Name", ""))]
    for child in plan.get("Plans", []):
        found += _scans(child)
    return found


async def test_every_store_query_uses_an_index(db: DatabaseSettings) -> None:
    pool = await create_pool(db.model_copy(update={"pool": PoolSettings(min_idle=1, max_open=1)}), min_size=1)
    try:
        store = ConversationStore(pool)
        t0 = datetime(2026, 11, 1, tzinfo=UTC)
        for s in range(20):
            await store.start_session(f"s{s}", f"dev{s % 4}", agent_id="ag", started_at=t0 + timedelta(hours=s))
            await store.add_messages(
                [
                    NewMessage(
                        f"s{s}",
                        f"dev{s % 4}",
                        "user",
                        f"北京天气 weather {i}",
                        message_id=f"s{s}-{i}",
                        created_at=t0 + timedelta(hours=s, minutes=i),
                    )
                    for i in range(10)
                ]
            )
        await store.add_audio_file(NewAudioFile("f1", "s1", "dev1", "b", "k", "opus", 10, 60, 16000, 1, "user", "s1-0"))

        captured: list[tuple[str, tuple[Any, ...]]] = []
        async with pool.acquire() as conn:
            conn.add_query_logger(lambda q: captured.append((q.query, q.args)))

        page = await store.list_sessions(SessionFilter(), limit=5)
        await store.list_sessions(SessionFilter(), limit=5, cursor=page.next_cursor)
        await store.list_sessions(SessionFilter(device_id="dev1", since=t0, until=t0 + timedelta(days=7)), limit=5)
        await store.list_sessions(SessionFilter(agent_id="ag"), limit=5)
        await store.last_messages("s3", 5)
        await store.timeline("s3")
        await store.device_context("dev1", 5, exclude_session="s1")
        await store.search_messages("北京天气")
        await store.search_messages("weather", device_id="dev2")
        await store.messages_per_day(t0, t0 + timedelta(days=2), device_id="dev1")
        await store.messages_per_day(t0, t0 + timedelta(days=2))
        await store.get_message("s1-1")
        await store.get_system_prompt("dev1")
        await store.list_audio_files(session_id="s1")
        await store.list_audio_files(device_id="dev1", day=date(2026, 12, 3))
        await RetentionJob(pool, None, days=1).run(dry_run=True, now=t0 + timedelta(days=3))

        reads = [
            (q, a)
            for q, a in captured
            if q.lstrip().upper().startswith("SELECT") and any(t in q for t in BIG_TABLES) and ";" not in q.strip()[:-1]
        ]
        assert len(reads) >= 15
        problems = []
        async with pool.acquire() as conn:
            await conn.execute("SET enable_seqscan = off")  # tiny tables: make the planner show the index it can use
            for query, args in reads:
                plan = (await conn.fetchval(f"EXPLAIN (FORMAT JSON) {query}", *args))[0]["Plan"]
                seq = [rel for node, rel in _scans(plan) if node == "Seq Scan" and rel in BIG_TABLES]
                if seq:
                    problems.append(f"sequential scan of {seq} for: {' '.join(query.split())[:160]}")
            await conn.execute("RESET enable_seqscan")
    finally:
        await pool.close()
    assert not problems, "\n".join(problems)
