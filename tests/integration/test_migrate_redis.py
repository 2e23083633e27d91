"""``xiaozhi migrate redis-to-pg`` against the machine's real Redis (keys under a random prefix, deleted after)
and a fresh PostgreSQL database: the layout the Go server really writes, and the list layout the design assumed."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from server.config import DatabaseSettings
from server.migrate.pg_target import open_target
from server.migrate.redis_writer import ConversationWriter, KeySlice
from server.migrate.report import Report
from server.storage import schema
from server.storage.db import connect
from tests.support.migrate import (
    delete_prefix,
    eino,
    messages_schema,
    migrate,
    migrate_failure,
    pg_flags,
    redis_client,
    report_entries,
    snapshot_redis,
    wait_for_rows,
)

MAC = "aa:bb:cc:dd:ee:ff"
NS = 1_700_000_000_000_000_000  # 2023-11-14 22:13:20 UTC
MS = 10**6  # scores are doubles: near today's nanoseconds they step by 256 ns, so tests space them wider
SECOND = 10**9
MINUTE = 60 * SECOND


def as_stored(score_ns: int) -> int:
    """The score Redis keeps (a double) back as integer nanoseconds, as the report names a record."""
    return int(float(score_ns))


TOOL_CALLS = [{"id": "call_1", "type": "function", "function": {"name": "set_volume", "arguments": '{"level": 30}'}}]


@pytest.fixture
async def redis() -> AsyncIterator[aioredis.Redis]:
    async with redis_client() as client:
        yield client


@pytest.fixture
async def prefix(redis: aioredis.Redis) -> AsyncIterator[str]:
    name = f"xz_mig_{uuid.uuid4().hex[:10]}"
    yield name
    await delete_prefix(redis, name)


@pytest.fixture
async def pg(db: DatabaseSettings) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(db)
    try:
        yield conn
    finally:
        await conn.close()


def flags(prefix: str, db: DatabaseSettings, *extra: str) -> list[str]:
    return ["--redis-host", "127.0.0.1", "--redis-port", "6379", "--key-prefix", prefix, *pg_flags(db), *extra]


async def go_dialogue(redis: aioredis.Redis, prefix: str, device: str = MAC) -> None:
    """What the Go server leaves behind: a morning chat with a tool call, then an evening one."""
    await redis.zadd(f"{prefix}:llm:{device}", {
        eino("user", "把音量调到30"): NS,
        eino("assistant", "", tool_calls=TOOL_CALLS): NS + 2 * SECOND,
        eino("tool", '{"ok": true}', tool_call_id="call_1"): NS + 3 * SECOND,
        eino("assistant", "好的，音量已调到30 🎵"): NS + 4 * SECOND,
        eino("user", "tell me a story", name="kid"): NS + 10 * 60 * MINUTE,  # 10 h later: a new conversation
        eino("assistant", "Once upon a time…"): NS + 10 * 60 * MINUTE + 5 * SECOND,
    })  # fmt: skip
    await redis.set(f"{prefix}:llm:system:{device}", "你是小智，一个友好的助手。")


async def test_go_layout_becomes_sessions_split_at_idle_gaps(
    redis: aioredis.Redis, prefix: str, db: DatabaseSettings, pg: asyncpg.Connection,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    await go_dialogue(redis, prefix)
    indexes = await messages_schema(pg)
    code, out = await migrate(capsys, "redis-to-pg", *flags(prefix, db))
    assert code == 0, out
    # the target held no messages: its indexes and foreign key were built once after the load, as they were
    assert "indexes and foreign key: 4 built once after the load (the target held no messages)" in out
    assert await messages_schema(pg) == indexes
    sessions = await pg.fetch(
        "SELECT session_id, device_id, status, started_at, ended_at, message_count, tool_call_count, last_seq, "
        "last_message_at, metadata FROM conversation_sessions ORDER BY started_at"
    )
    assert len(sessions) == 2
    first, second = sessions
    assert (first["device_id"], first["status"], first["message_count"], first["tool_call_count"]) == (
        MAC, "migrated", 4, 1
    )  # fmt: skip
    assert first["started_at"] == datetime.fromtimestamp(NS / 1e9, UTC)
    assert first["ended_at"] == first["last_message_at"] == datetime.fromtimestamp((NS + 4 * SECOND) / 1e9, UTC)
    assert first["metadata"] == {"migrated_from": "redis", "redis_key": f"{prefix}:llm:{MAC}"}
    assert (second["message_count"], second["last_seq"]) == (2, 2)
    rows = await pg.fetch(
        "SELECT session_id, sequence_num, role, content, tool_calls::text, tool_call_id, metadata::text, created_at "
        "FROM conversation_messages ORDER BY created_at"
    )
    assert [(r["session_id"] == first["session_id"], r["sequence_num"], r["role"], r["content"]) for r in rows] == [
        (True, 1, "user", "把音量调到30"),
        (True, 2, "assistant", ""),
        (True, 3, "tool", '{"ok": true}'),
        (True, 4, "assistant", "好的，音量已调到30 🎵"),
        (False, 1, "user", "tell me a story"),
        (False, 2, "assistant", "Once upon a time…"),
    ]
    assert json.loads(rows[1]["tool_calls"]) == TOOL_CALLS
    assert rows[2]["tool_call_id"] == "call_1"
    assert json.loads(rows[4]["metadata"]) == {"name": "kid"}  # eino's name goes to metadata
    assert (
        await pg.fetchval("SELECT prompt FROM system_prompts WHERE device_id = $1", MAC) == "你是小智，一个友好的助手。"
    )
    assert "messages: 6 read, 6 inserted, 0 already there, 0 skipped" in out
    assert "sessions: 2 created" in out


async def test_a_longer_session_gap_keeps_one_session(
    redis: aioredis.Redis, prefix: str, db: DatabaseSettings, pg: asyncpg.Connection,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    await go_dialogue(redis, prefix)
    code, out = await migrate(capsys, "redis-to-pg", *flags(prefix, db, "--session-gap", "12h"))
    assert code == 0, out
    assert await pg.fetchval("SELECT count(*) FROM conversation_sessions") == 1
    assert await pg.fetchval("SELECT max(sequence_num) FROM conversation_messages") == 6


@pytest.mark.parametrize("given", ["with colon", "without colon", "go default double colon"])
async def test_prefix_with_or_without_trailing_colon(
    redis: aioredis.Redis, prefix: str, db: DatabaseSettings, pg: asyncpg.Connection,
    capsys: pytest.CaptureFixture[str], given: str,
) -> None:  # fmt: skip
    # the Go code's default prefix "xiaozhi:" made keys like "xiaozhi::llm:<device>"
    stored = f"{prefix}:" if given == "go default double colon" else prefix
    await go_dialogue(redis, stored)
    flag = prefix + ":" if given == "with colon" else prefix
    code, out = await migrate(capsys, "redis-to-pg", *flags(flag, db))
    assert code == 0, out
    assert await pg.fetchval("SELECT count(*) FROM conversation_messages WHERE device_id = $1", MAC) == 6
    assert await pg.fetchval("SELECT count(*) FROM system_prompts") == 1


async def test_list_layout_and_device_ids_with_colons(
    redis: aioredis.Redis, prefix: str, db: DatabaseSettings, pg: asyncpg.Connection,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    ms = NS // 10**6
    await redis.rpush(f"{prefix}:conversation:{MAC}:sess-42",
                      json.dumps({"role": "user", "content": "hi", "timestamp": ms}),
                      json.dumps({"role": "assistant", "content": "hello", "timestamp": ms + 1500}),
                      json.dumps({"role": "user", "content": "no timestamp"}))  # fmt: skip
    await redis.rpush(f"{prefix}:conversation:11-22-33-44-55-66", json.dumps({"role": "user", "content": "dash mac"}))
    await redis.rpush(f"{prefix}:conversation:robot-7:s1", json.dumps({"role": "user", "content": "plain id"}))
    # a device whose id itself looks like "system:…" in the Go layout is still a dialogue (it is a sorted set)
    await redis.zadd(f"{prefix}:llm:system:odd", {eino("user", "odd device"): NS})
    code, out = await migrate(capsys, "redis-to-pg", *flags(prefix, db))
    assert code == 0, out
    rows = await pg.fetch(
        "SELECT m.device_id, m.sequence_num, m.content, m.created_at, s.metadata->>'redis_key' AS key "
        "FROM conversation_messages m JOIN conversation_sessions s USING (session_id)"
    )
    got = {(r["device_id"], r["sequence_num"], r["content"]) for r in rows}
    assert got == {
        ("11-22-33-44-55-66", 1, "dash mac"),
        (MAC, 1, "hi"), (MAC, 2, "hello"), (MAC, 3, "no timestamp"),
        ("robot-7", 1, "plain id"),
        ("system:odd", 1, "odd device"),
    }  # fmt: skip
    by_content = {r["content"]: r for r in rows}
    assert by_content["hello"]["created_at"] == datetime.fromtimestamp((ms + 1500) / 1000, UTC)
    assert by_content["no timestamp"]["created_at"] == by_content["hello"]["created_at"]  # keeps the order
    assert by_content["hi"]["key"] == f"{prefix}:conversation:{MAC}:sess-42"


async def test_malformed_records_are_skipped_not_their_key(
    redis: aioredis.Redis, prefix: str, db: DatabaseSettings, pg: asyncpg.Connection,
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:  # fmt: skip
    key = f"{prefix}:llm:{MAC}"
    await redis.zadd(key, {
        eino("user", "good one"): NS,
        b"{not json": NS + 1 * MS,
        eino("robot", "beep"): NS + 2 * MS,
        b'{"content": "no role"}': NS + 3 * MS,
        b'{"role": "user", "content": "caf\xe9"}': NS + 4 * MS,  # latin-1 bytes: broken encoding
        b'{"role": "user", "content": "nul \\u0000 inside"}': NS + 5 * MS,
        b'{"role": "user", "content": "lone \\ud800 surrogate"}': NS + 6 * MS,
        b'["role", "user"]': NS + 7 * MS,
        eino("assistant", "good two"): NS + 8 * MS,
    })  # fmt: skip
    await redis.hset(f"{prefix}:llm:{MAC}-2", mapping={"role": "user"})  # not a sorted set
    await redis.set(f"{prefix}:llm:system:{MAC}", b"\xff\xfe prompt")
    report = tmp_path / "report.jsonl"
    code, out = await migrate(capsys, "redis-to-pg", *flags(prefix, db, "--report", str(report)))
    assert code == 3, out
    assert [r["content"] for r in await pg.fetch("SELECT content FROM conversation_messages ORDER BY created_at")] == [
        "good one", "good two"
    ]  # fmt: skip
    entries = report_entries(report)
    reasons = {e.get("score"): e["reason"] for e in entries if "score" in e}
    assert reasons[as_stored(NS + 1 * MS)].startswith("invalid JSON")
    assert reasons[as_stored(NS + 2 * MS)] == "unknown role 'robot'"
    assert reasons[as_stored(NS + 3 * MS)] == "missing role"
    assert reasons[as_stored(NS + 4 * MS)] == "not valid UTF-8 (byte 0xe9 at offset 32)"
    assert reasons[as_stored(NS + 5 * MS)] == "content contains a NUL character, which PostgreSQL text cannot hold"
    assert reasons[as_stored(NS + 6 * MS)] == "content contains a lone UTF-16 surrogate escape (broken encoding)"
    assert reasons[as_stored(NS + 7 * MS)] == "not a JSON object but list"
    assert all(e["key"] == key and e["action"] == "skipped" and "record" in e for e in entries if "score" in e)
    others = {e["key"]: e["reason"] for e in entries if "score" not in e}
    assert others == {
        f"{prefix}:llm:{MAC}-2": "a hash, but a dialogue key holds a sorted set",
        f"{prefix}:llm:system:{MAC}": "system prompt is not valid UTF-8 (byte 0xff at offset 0)",
    }
    assert "messages: 9 read, 2 inserted, 0 already there, 7 skipped" in out


async def test_a_record_postgresql_refuses_skips_only_that_record(
    redis: aioredis.Redis, prefix: str, db: DatabaseSettings, pg: asyncpg.Connection,
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:  # fmt: skip
    # a rule only the target knows about (say, a constraint a DBA added): the batch fails in PostgreSQL
    await pg.execute("ALTER TABLE conversation_messages ADD CONSTRAINT no_poison CHECK (content <> 'poison')")
    await go_dialogue(redis, prefix)
    await redis.zadd(f"{prefix}:llm:{MAC}", {eino("user", "poison"): NS + 3 * SECOND + MS})
    await go_dialogue(redis, prefix, "11:22:33:44:55:66")
    report = tmp_path / "report.jsonl"
    code, out = await migrate(capsys, "redis-to-pg", *flags(prefix, db, "--report", str(report)))
    assert code == 3, out
    counts = dict(await pg.fetch("SELECT device_id, count(*) FROM conversation_messages GROUP BY 1"))
    assert counts == {MAC: 6, "11:22:33:44:55:66": 6}  # the rest of that key, and the other key, are stored
    [entry] = report_entries(report)
    assert entry["reason"].startswith('refused by PostgreSQL: new row for relation "conversation_messages" violates')
    assert entry["score"] == as_stored(NS + 3 * SECOND + MS)
    # the counters match what is stored; numbering has no hole where the refused record was
    assert await pg.fetchval("SELECT sum(message_count) FROM conversation_sessions") == 12
    seqs = await pg.fetch(
        "SELECT array_agg(sequence_num ORDER BY sequence_num) AS s FROM conversation_messages GROUP BY session_id"
    )
    assert sorted(r["s"] for r in seqs) == [[1, 2], [1, 2], [1, 2, 3, 4], [1, 2, 3, 4]]


async def test_dry_run_writes_nothing_and_predicts_the_real_run(
    redis: aioredis.Redis, prefix: str, db: DatabaseSettings, pg: asyncpg.Connection,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    await go_dialogue(redis, prefix)
    await redis.zadd(f"{prefix}:llm:{MAC}", {b"broken": NS + 99})
    code, dry = await migrate(capsys, "redis-to-pg", *flags(prefix, db, "--dry-run"))
    assert code == 3, dry
    assert "DRY RUN: nothing is written" in dry
    for table in ("conversation_sessions", "conversation_messages", "system_prompts"):
        assert await pg.fetchval(f"SELECT count(*) FROM {table}") == 0
    code, real = await migrate(capsys, "redis-to-pg", *flags(prefix, db))
    assert code == 3
    assert "messages: 7 read, 6 would insert, 0 already there, 1 skipped" in dry
    assert "messages: 7 read, 6 inserted, 0 already there, 1 skipped" in real
    assert "sessions: 2 would be created" in dry and "sessions: 2 created" in real
    target_line = [line for line in dry.splitlines() if line.startswith("target: ")]
    assert target_line == [line for line in real.splitlines() if line.startswith("target: ")]


async def test_rerun_adds_nothing_and_later_messages_continue_their_session(
    redis: aioredis.Redis, prefix: str, db: DatabaseSettings, pg: asyncpg.Connection,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    await go_dialogue(redis, prefix)
    before = await snapshot_redis(redis, prefix)
    assert (await migrate(capsys, "redis-to-pg", *flags(prefix, db)))[0] == 0
    state = "SELECT session_id, message_count, tool_call_count, last_seq, started_at, ended_at "
    state += "FROM conversation_sessions"
    sessions = sorted(map(tuple, await pg.fetch(state)))
    messages = sorted(map(tuple, await pg.fetch("SELECT * FROM conversation_messages")))
    code, out = await migrate(capsys, "redis-to-pg", *flags(prefix, db))
    assert code == 0
    assert "messages: 6 read, 0 inserted, 6 already there, 0 skipped" in out
    assert "built once after the load" not in out  # a target that holds messages keeps its indexes
    assert "system prompts: 0 inserted, 0 updated, 1 unchanged" in out
    assert sorted(map(tuple, await pg.fetch(state))) == sessions
    assert sorted(map(tuple, await pg.fetch("SELECT * FROM conversation_messages"))) == messages
    assert await snapshot_redis(redis, prefix) == before  # the source is only read
    # the old server kept running: one more message in the evening conversation
    await redis.zadd(f"{prefix}:llm:{MAC}", {eino("user", "and then?"): NS + 10 * 60 * MINUTE + 60 * SECOND})
    code, out = await migrate(capsys, "redis-to-pg", *flags(prefix, db))
    assert "messages: 7 read, 1 inserted, 6 already there" in out
    row = await pg.fetchrow(
        "SELECT m.sequence_num, s.message_count, s.last_seq FROM conversation_messages m "
        "JOIN conversation_sessions s USING (session_id) WHERE m.content = 'and then?'"
    )
    assert tuple(row) == (3, 3, 3)
    assert await pg.fetchval("SELECT count(*) FROM conversation_sessions") == 2


async def test_interrupted_run_then_rerun_converges(
    redis: aioredis.Redis, prefix: str, db: DatabaseSettings, pg: asyncpg.Connection,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    for d in range(60):
        history = {eino("user", f"message {i} of device {d}"): NS + i * MINUTE for i in range(100)}
        await redis.zadd(f"{prefix}:llm:dev-{d:02d}", history)
    indexes = await messages_schema(pg)
    args = flags(prefix, db, "--batch-size", "50", "--writers", "1")
    task = asyncio.create_task(migrate(capsys, "redis-to-pg", *args))
    await wait_for_rows(pg, "SELECT count(*) FROM conversation_messages", 300)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    partial = await pg.fetchval("SELECT count(*) FROM conversation_messages")
    assert 300 <= partial < 6000
    # the cut-off bulk load left its indexes unbuilt, and says so
    assert "conversation_messages_content_trgm_idx" in (await schema.status(pg)).missing
    assert "are not built yet; re-running the same command" in capsys.readouterr().err
    code, out = await migrate(capsys, "redis-to-pg", *flags(prefix, db, "--batch-size", "700"))
    assert code == 0, out
    assert f"messages: 6,000 read, {6000 - partial:,} inserted, {partial:,} already there" in out
    assert await pg.fetchval("SELECT count(*), count(DISTINCT message_id) FROM conversation_messages") == 6000
    assert await messages_schema(pg) == indexes and (await schema.status(pg)).up_to_date
    # the same result as one uninterrupted run: one 100-message session per device, numbered 1..100
    sessions = await pg.fetch("SELECT device_id, message_count, last_seq FROM conversation_sessions")
    assert len(sessions) == 60 and {(r["message_count"], r["last_seq"]) for r in sessions} == {(100, 100)}
    out_of_order = await pg.fetchval(
        "SELECT count(*) FROM (SELECT sequence_num, "
        "row_number() OVER (PARTITION BY session_id ORDER BY created_at) AS n FROM conversation_messages) AS x "
        "WHERE sequence_num <> n"
    )
    assert out_of_order == 0


async def test_a_first_load_skips_the_look_up_but_never_stores_a_message_twice(
    db: DatabaseSettings, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    # On a target that held no messages the writer's first try skips looking its ids up; should one be there
    # after all (another run writing meanwhile), the unique index refuses the batch and the key-by-key retry
    # looks them up.
    at = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)

    def record(mid: str, pos: int, text: str) -> tuple:
        return ("s-1", MAC, mid, pos, "user", text, None, None, None, None, at.replace(minute=pos))

    report = Report(tmp_path / "report.jsonl")
    target = await open_target(db, dry_run=False)  # a connection set up as the migration's are
    try:
        earlier = ConversationWriter(target.conn, report, dry_run=False, schema_missing=False)
        await earlier.write([KeySlice("k", records=[record("m-1", 1, "hello")], locs=[1], raws=[b"1"])])
        writer = ConversationWriter(target.conn, report, dry_run=False, schema_missing=False)
        writer.fresh = True
        both = [record("m-1", 1, "hello"), record("m-2", 2, "again")]
        await writer.write([KeySlice("k", records=both, locs=[1, 2], raws=[b"1", b"2"])])
    finally:
        report.close()
        await target.close()
    assert (writer.counts.messages_new, writer.counts.messages_present, writer.counts.messages_refused) == (1, 1, 0)
    rows = await pg.fetch("SELECT message_id, sequence_num FROM conversation_messages ORDER BY sequence_num")
    assert [tuple(r) for r in rows] == [("m-1", 1), ("m-2", 2)]
    assert await pg.fetchval("SELECT message_count FROM conversation_sessions WHERE session_id = 's-1'") == 2


async def test_a_large_history_with_equal_scores_is_read_in_chunks_exactly_once(
    redis: aioredis.Redis, prefix: str, db: DatabaseSettings, pg: asyncpg.Connection,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    key = f"{prefix}:llm:{MAC}"
    await redis.zadd(key, {eino("user", f"same time {i:05d}"): NS for i in range(2500)})  # 2.5 chunks at one score
    await redis.zadd(key, {eino("assistant", f"later {i:05d}"): NS + i * SECOND for i in range(1, 2501)})
    code, out = await migrate(capsys, "redis-to-pg", *flags(prefix, db, "--batch-size", "1000"))
    assert code == 0, out
    assert await pg.fetchval("SELECT count(DISTINCT content) FROM conversation_messages") == 5000
    assert "messages: 5,000 read, 5,000 inserted" in out


async def test_expected_failures_print_one_error_line(db: DatabaseSettings, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = await migrate_failure(capsys, "redis-to-pg", "--redis-port", "1", *pg_flags(db))
    assert code == 1 and err.startswith("error: Redis 127.0.0.1:1/0 is unreachable") and len(err.splitlines()) == 1
    code, err = await migrate_failure(capsys, "redis-to-pg")  # no config and no --pg-*: no target was named
    assert code == 2 and err.startswith("error: no target PostgreSQL")
    code, err = await migrate_failure(capsys, "redis-to-pg", "--session-gap", "soon")
    assert code == 2 and "expected a duration such as 30m" in err
