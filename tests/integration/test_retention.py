from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from server.storage.audio_store import AudioStore
from server.storage.conversation_store import ConversationStore
from server.storage.models import NewMessage
from server.storage.retention import RetentionJob
from tests.support.audio import encode_opus

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=100)
PACKETS = encode_opus(16000, 60, 0.6)


async def _conversation(store: ConversationStore, audio: AudioStore, session: str, when: datetime) -> None:
    await store.start_session(session, "dev", started_at=when)
    await store.add_messages(
        [
            NewMessage(session, "dev", "user", f"{session} question", message_id=f"{session}-u", created_at=when),
            NewMessage(session, "dev", "assistant", "answer", message_id=f"{session}-a", created_at=when),
        ]
    )
    await audio.save_opus_packets(
        session_id=session,
        device_id="dev",
        source="user",
        packets=PACKETS,
        sample_rate=16000,
        message_id=f"{session}-u",
        created_at=when,
    )
    await store.end_session(session, ended_at=when + timedelta(minutes=1))
    # audio rows take the upload time; make them as old as the conversation they belong to
    await store.pool.execute("UPDATE audio_files SET created_at = $2 WHERE session_id = $1", session, when)


async def test_dry_run_reports_and_keeps_then_run_removes_db_rows_and_objects(
    store: ConversationStore, audio_store: AudioStore, pool: asyncpg.Pool
) -> None:
    await _conversation(store, audio_store, "old", OLD)
    await _conversation(store, audio_store, "new", NOW - timedelta(days=1))
    job = RetentionJob(pool, audio_store, days=90)

    preview = await job.run(dry_run=True, now=NOW)
    assert (preview.messages, preview.sessions, preview.audio_rows) == (2, 1, 1)
    assert await pool.fetchval("SELECT count(*) FROM conversation_messages") == 4
    assert len(await audio_store.list_objects("dev")) == 2
    assert any("would remove 2 messages" in line for line in preview.lines())

    report = await job.run(now=NOW)
    assert (report.messages, report.sessions, report.audio_rows, report.audio_failed) == (2, 1, 1, 0)
    assert [s.session_id for s in (await store.list_sessions()).items] == ["new"]
    keys = await audio_store.list_objects("dev")
    assert len(keys) == 1 and "/new/" in keys[0]
    again = await job.run(now=NOW)
    assert (again.messages, again.sessions, again.audio_rows) == (0, 0, 0)


async def test_partly_expired_session_keeps_its_recent_messages_and_counters(
    store: ConversationStore, pool: asyncpg.Pool
) -> None:
    await store.start_session("long", "dev", started_at=OLD)
    await store.add_messages(
        [NewMessage("long", "dev", "user", "old", created_at=OLD), NewMessage("long", "dev", "user", "recent")]
    )
    report = await RetentionJob(pool, None, days=90).run(now=NOW + timedelta(days=1))
    assert (report.messages, report.sessions) == (1, 0)
    info = await store.get_session("long")
    assert info.message_count == 1
    assert [m.content for m in await store.timeline("long")] == ["recent"]


async def test_zero_days_keeps_everything(store: ConversationStore, pool: asyncpg.Pool) -> None:
    await store.add_message(NewMessage("s", "dev", "user", "x", created_at=OLD))
    report = await RetentionJob(pool, None, days=0).run(now=NOW)
    assert report.messages == 0
    assert await pool.fetchval("SELECT count(*) FROM conversation_messages") == 1


async def test_without_audio_store_audio_rows_and_their_sessions_are_kept(
    store: ConversationStore, audio_store: AudioStore, pool: asyncpg.Pool
) -> None:
    await _conversation(store, audio_store, "old", OLD)
    report = await RetentionJob(pool, None, days=90).run(now=NOW)
    assert report.messages == 2 and report.audio_skipped == 1 and report.sessions == 0
    assert len(await audio_store.list_objects("dev")) == 1, "no object is orphaned"


async def test_active_session_still_talking_is_kept(store: ConversationStore, pool: asyncpg.Pool) -> None:
    await store.start_session("live", "dev", started_at=OLD)
    await store.add_message(NewMessage("live", "dev", "user", "still here", created_at=NOW - timedelta(minutes=1)))
    report = await RetentionJob(pool, None, days=90).run(now=NOW)
    assert report.sessions == 0
    assert (await store.get_session("live")).status == "active"


async def test_sessions_left_active_by_a_crash_are_ended(store: ConversationStore, pool: asyncpg.Pool) -> None:
    await store.start_session("crashed", "dev", started_at=NOW - timedelta(hours=5))
    await store.add_message(NewMessage("crashed", "dev", "user", "hi", created_at=NOW - timedelta(hours=4)))
    await store.start_session("talking", "dev", started_at=NOW - timedelta(hours=5))
    await store.add_message(NewMessage("talking", "dev", "user", "still here", created_at=NOW - timedelta(minutes=2)))
    job = RetentionJob(pool, None, days=0)
    assert (await job.run(dry_run=True, now=NOW)).stale_ended == 1
    assert (await store.get_session("crashed")).status == "active"
    report = await job.run(now=NOW)
    assert report.stale_ended == 1
    crashed = await store.get_session("crashed")
    assert crashed.status == "ended" and crashed.ended_at == NOW - timedelta(hours=4)
    assert (await store.get_session("talking")).status == "active"
