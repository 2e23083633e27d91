"""``xiaozhi migrate verify``: source and target counts per table and per device, after real migrations."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from server.config import DatabaseSettings
from server.storage.db import connect
from tests.support.migrate import (
    MariaDb,
    delete_prefix,
    eino,
    migrate,
    migrate_failure,
    pg_flags,
    redis_client,
    scratch_mariadb,
)

NS = 1_700_000_000_000_000_000
T0 = "2024-03-01 08:30:00.000"


@pytest.fixture
async def mariadb() -> AsyncIterator[MariaDb]:
    async with scratch_mariadb() as db:
        yield db


@pytest.fixture
async def redis() -> AsyncIterator[aioredis.Redis]:
    async with redis_client() as client:
        yield client


@pytest.fixture
async def prefix(redis: aioredis.Redis) -> AsyncIterator[str]:
    name = f"xz_ver_{uuid.uuid4().hex[:10]}"
    yield name
    await delete_prefix(redis, name)


def line(out: str, start: str) -> list[str]:
    [found] = [text.split() for text in out.splitlines() if text.startswith(start)]
    return found


async def test_verify_confirms_a_complete_migration_then_names_what_is_missing(
    mariadb: MariaDb, redis: aioredis.Redis, prefix: str, db: DatabaseSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    await mariadb.insert("users", [(1, "admin", "pw", None, "admin", T0, T0), (2, "李雷", "pw", None, "user", T0, T0)])
    await mariadb.insert("devices", [(1, 1, 0, "aa:bb:cc:dd:ee:01", "a", None, None, 1, None, T0, T0),
                                     (2, 2, 0, "aa:bb:cc:dd:ee:02", "b", None, None, 1, None, T0, T0),
                                     (3, 2, 0, None, "no code", None, None, 1, None, T0, T0)])  # fmt: skip
    for d in ("aa:bb:cc:dd:ee:01", "aa:bb:cc:dd:ee:02"):
        await redis.zadd(f"{prefix}:llm:{d}", {eino("user", f"你好 {i}"): NS + i * 10**9 for i in range(5)})
        await redis.set(f"{prefix}:llm:system:{d}", "prompt")
    await redis.zadd(f"{prefix}:llm:aa:bb:cc:dd:ee:02", {b"{broken": NS + 99 * 10**9})
    redis_flags = ["--redis-host", "127.0.0.1", "--redis-port", "6379", "--key-prefix", prefix]
    assert (await migrate(capsys, "mysql-to-pg", *mariadb.flags(), *pg_flags(db)))[0] == 3  # the device with no code
    assert (await migrate(capsys, "redis-to-pg", *redis_flags, *pg_flags(db)))[0] == 3  # the broken member

    code, out = await migrate(capsys, "verify", *mariadb.flags(), *redis_flags, *pg_flags(db))
    assert code == 0, out
    assert out.splitlines()[-1] == "verify: complete"
    # name, source, invalid, expected, in target, missing, target total, status
    assert line(out, "users") == ["users", "2", "0", "2", "2", "0", "2", "OK"]
    assert line(out, "devices") == ["devices", "3", "1", "2", "2", "0", "2", "OK"]
    assert line(out, "conversation_messages") == ["conversation_messages", "11", "1", "10", "10", "0", "10", "OK"]
    assert line(out, "conversation_sessions") == ["conversation_sessions", "2", "0", "2", "2", "0", "2", "OK"]
    assert line(out, "system_prompts") == ["system_prompts", "2", "0", "2", "2", "0", "2", "OK"]
    assert "per device: all 2 devices complete" in out

    conn = await connect(db)
    try:
        await conn.execute("DELETE FROM devices WHERE id = 2")
        await conn.execute(
            "DELETE FROM conversation_messages WHERE device_id = 'aa:bb:cc:dd:ee:02' AND content = '你好 3'"
        )
    finally:
        await conn.close()
    code, out = await migrate(capsys, "verify", *mariadb.flags(), *redis_flags, *pg_flags(db))
    assert code == 3, out
    assert line(out, "devices") == ["devices", "3", "1", "2", "1", "1", "1", "MISSING"]
    assert line(out, "conversation_messages") == ["conversation_messages", "11", "1", "10", "9", "1", "9", "MISSING"]
    # per device: messages, invalid, in target, missing, sessions, missing, prompt
    assert line(out, "aa:bb:cc:dd:ee:02") == ["aa:bb:cc:dd:ee:02", "6", "1", "4", "1", "1", "0", "ok"]
    assert "aa:bb:cc:dd:ee:01" not in out  # complete devices are listed only with --all-devices
    assert out.splitlines()[-1].startswith("verify: MISSING records")

    code, out = await migrate(capsys, "verify", "--source", "redis", *redis_flags, *pg_flags(db), "--all-devices")
    assert code == 3 and "aa:bb:cc:dd:ee:01" in out and "users" not in out


async def test_verify_against_an_empty_database_says_nothing_was_migrated(
    fresh_db: DatabaseSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = await migrate_failure(capsys, "verify", "--source", "redis", *pg_flags(fresh_db))
    assert code == 1
    assert err == f"error: PostgreSQL postgres@{fresh_db.host}:{fresh_db.port}/{fresh_db.database} has no schema: " \
                  "nothing was migrated there yet\n"  # fmt: skip
