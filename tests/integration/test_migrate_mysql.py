"""``xiaozhi migrate mysql-to-pg`` against the machine's real MariaDB and a fresh PostgreSQL database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from server.config import DatabaseSettings
from server.storage.db import connect
from tests.support.migrate import (
    MariaDb,
    migrate,
    migrate_failure,
    migrate_process,
    pg_flags,
    report_entries,
    report_files,
    scratch_mariadb,
    wait_for_rows,
)

T0 = "2024-03-01 08:30:00.250"
T0_UTC = datetime(2024, 3, 1, 8, 30, 0, 250000, tzinfo=UTC)


@pytest.fixture
async def mariadb() -> AsyncIterator[MariaDb]:
    async with scratch_mariadb() as db:
        yield db


@pytest.fixture
async def pg(db: DatabaseSettings) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(db)
    try:
        yield conn
    finally:
        await conn.close()


async def fill_manager(m: MariaDb) -> None:
    """A small but realistic manager database: Chinese and emoji text, NULLs, GORM's 0 for "no agent"."""
    await m.insert("users", [
        (1, "admin", "$2a$10$abcdefghijklmnopqrstuv", "admin@example.cn", "admin", T0, T0),
        (2, "张三", "$2a$10$zzzzzzzzzzzzzzzzzzzzzz", None, "user", T0, "2024-03-02 09:00:00.000"),
        (3, "emoji🎉user", "x", "e@example.com", "user", T0, T0),
    ])  # fmt: skip
    await m.insert("agents", [
        (1, 1, "小智", "你是一个友好的助手 😊", "qwen", "edge", "normal", "active", T0, T0),
        (2, 2, "Story bot", None, None, None, None, "active", T0, T0),
    ])  # fmt: skip
    await m.insert("devices", [
        (1, 1, 1, "aa:bb:cc:dd:ee:01", "厨房", "ch1", "psk1", 1, T0, T0, T0),
        (2, 2, 0, "aa:bb:cc:dd:ee:02", None, None, None, 0, None, T0, T0),  # no agent (GORM writes 0)
    ])  # fmt: skip
    await m.insert("configs", [
        (1, "llm", "通义千问", "qwen", "openai", '{"model": "qwen2.5", "温度": 0.7}', 1, b"\x01", T0, T0),
        (2, "tts", "Edge", "edge", "edge", '{"voice": "zh-CN-XiaoxiaoNeural"}', 1, b"\x00", T0, T0),
    ])  # fmt: skip
    await m.insert("global_roles", [(1, "儿童老师", "耐心", "用简单的话回答".encode(), 1, T0, T0)])


async def test_migrates_every_table_keeping_ids_unicode_nulls_and_times(
    mariadb: MariaDb, db: DatabaseSettings, pg: asyncpg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    await fill_manager(mariadb)
    code, out = await migrate(capsys, "mysql-to-pg", *mariadb.flags(), *pg_flags(db))
    assert code == 0, out
    assert "report: nothing skipped or adjusted" in out

    users = await pg.fetch("SELECT id, username, password, email, role, created_at, updated_at FROM users ORDER BY id")
    assert [tuple(u) for u in users] == [
        (1, "admin", "$2a$10$abcdefghijklmnopqrstuv", "admin@example.cn", "admin", T0_UTC, T0_UTC),
        (2, "张三", "$2a$10$zzzzzzzzzzzzzzzzzzzzzz", None, "user", T0_UTC, datetime(2024, 3, 2, 9, tzinfo=UTC)),
        (3, "emoji🎉user", "x", "e@example.com", "user", T0_UTC, T0_UTC),
    ]
    devices = await pg.fetch("SELECT id, user_id, agent_id, device_code, device_name, challenge, activated, "
                             "last_active_at FROM devices ORDER BY id")  # fmt: skip
    assert [tuple(d) for d in devices] == [
        (1, 1, 1, "aa:bb:cc:dd:ee:01", "厨房", "ch1", True, T0_UTC),
        (2, 2, None, "aa:bb:cc:dd:ee:02", None, None, False, None),
    ]
    agent = await pg.fetchrow("SELECT name, custom_prompt, user_id FROM agents WHERE id = 1")
    assert tuple(agent) == ("小智", "你是一个友好的助手 😊", 1)
    configs = await pg.fetch("SELECT id, name, json_data::text, enabled, is_default FROM configs ORDER BY id")
    assert [tuple(c) for c in configs] == [
        (1, "通义千问", '{"model": "qwen2.5", "温度": 0.7}', True, True),
        (2, "Edge", '{"voice": "zh-CN-XiaoxiaoNeural"}', True, False),
    ]
    assert await pg.fetchval("SELECT prompt FROM global_roles WHERE id = 1") == "用简单的话回答"
    # the id sequences continue after the migrated ids: the new server's next user does not collide
    assert await pg.fetchval("INSERT INTO users (username) VALUES ('new') RETURNING id") == 4
    assert await pg.fetchval("INSERT INTO agents (name) VALUES ('new') RETURNING id") == 3
    # the summary shows source and target counts per table
    assert "users                  3            3         0         0        0        0         3" in out


async def test_datetime_columns_follow_the_given_time_zone_and_timestamp_columns_are_utc(
    mariadb: MariaDb, db: DatabaseSettings, pg: asyncpg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    await mariadb.insert("global_roles", [(1, "r", None, None, 0, "2024-03-01 16:30:00.000", "2024-03-01 08:30:00")])
    flags = [*mariadb.flags(), *pg_flags(db), "--mysql-timezone", "Asia/Shanghai"]
    code, out = await migrate(capsys, "mysql-to-pg", *flags)
    assert code == 0, out
    row = await pg.fetchrow("SELECT created_at, updated_at FROM global_roles")
    assert row["created_at"] == datetime(2024, 3, 1, 8, 30, tzinfo=UTC)  # DATETIME, written in Shanghai time
    assert row["updated_at"] == datetime(2024, 3, 1, 8, 30, tzinfo=UTC)  # TIMESTAMP, stored as UTC by MySQL


async def test_bad_rows_are_skipped_and_listed_with_their_reason(
    mariadb: MariaDb, db: DatabaseSettings, pg: asyncpg.Connection, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    await fill_manager(mariadb)
    await mariadb.insert("users", [
        (10, None, "x", None, "user", T0, T0),  # missing username
        (11, "u" * 65, "x", None, "user", T0, T0),  # longer than the target's varchar(64)
        (12, "nul\x00byte", "x", None, "user", T0, T0),  # PostgreSQL text cannot hold NUL
    ])  # fmt: skip
    await mariadb.insert("devices", [
        (10, 1, 99, "aa:bb:cc:dd:ee:10", "dangling agent", None, None, 1, None, T0, T0),
        (11, 1, 1, None, "no code", None, None, 1, None, T0, T0),
    ])  # fmt: skip
    await mariadb.insert("configs", [
        (10, "llm", "broken", "broken", "openai", '{"model": ', 1, b"\x00", T0, T0),  # invalid JSON
        (11, "llm", "nan", "nan", "openai", '{"t": NaN}', 1, b"\x00", T0, T0),  # not JSON either
        (12, "asr", "defaults", "asr1", None, None, None, None, T0, T0),  # NULLs → the target's defaults
    ])  # fmt: skip
    await mariadb.insert("global_roles", [(10, "latin1", None, b"caf\xe9 \xff", 0, T0, T0)])  # broken encoding
    report = tmp_path / "report.jsonl"
    code, out = await migrate(capsys, "mysql-to-pg", *mariadb.flags(), *pg_flags(db), "--report", str(report))
    assert code == 3, out  # finished, but something was skipped
    entries = {(e["table"], e["id"]): e for e in report_entries(report)}
    reasons = {key: e["reason"] for key, e in entries.items() if e["action"] == "skipped"}
    assert reasons == {
        ("users", 10): "missing username (NULL, but the target requires a value)",
        ("users", 11): "username is 65 characters long; the target allows 64",
        ("users", 12): "username contains a NUL character, which PostgreSQL text cannot hold",
        ("devices", 11): "missing device_code (NULL, but the target requires a value)",
        ("configs", 10): reasons[("configs", 10)],
        ("configs", 11): reasons[("configs", 11)],
        ("global_roles", 10): "prompt is not valid UTF-8 (byte 0xe9 at offset 3)",
    }
    assert reasons[("configs", 10)].startswith("invalid JSON in json_data")
    assert reasons[("configs", 11)].startswith("invalid JSON in json_data: NaN is not JSON")
    assert entries[("devices", 10)]["action"] == "adjusted"
    assert "agent_id 99 does not exist in agents: stored as NULL" in entries[("devices", 10)]["reason"]
    # everything else arrived
    assert await pg.fetchval("SELECT count(*) FROM users") == 3
    assert await pg.fetchval("SELECT agent_id FROM devices WHERE id = 10") is None
    row = await pg.fetchrow("SELECT provider, json_data::text, enabled, is_default FROM configs WHERE id = 12")
    assert tuple(row) == ("", "{}", True, False)
    assert f"every one is listed in {report}" in out


async def test_dry_run_writes_nothing_and_predicts_the_real_run(
    mariadb: MariaDb, db: DatabaseSettings, pg: asyncpg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    await fill_manager(mariadb)
    await pg.execute("INSERT INTO users (id, username, role) VALUES (1, 'admin', 'user')")  # will be updated
    code, dry = await migrate(capsys, "mysql-to-pg", *mariadb.flags(), *pg_flags(db), "--dry-run")
    assert code == 0, dry
    assert "DRY RUN: nothing is written" in dry
    assert await pg.fetchval("SELECT count(*) FROM users") == 1
    assert await pg.fetchval("SELECT role FROM users WHERE id = 1") == "user"
    assert sum([await pg.fetchval(f"SELECT count(*) FROM {t}") for t in ("agents", "devices", "configs")]) == 0
    code, real = await migrate(capsys, "mysql-to-pg", *mariadb.flags(), *pg_flags(db))
    assert code == 0, real
    table = lambda text: [line.split()[:7] for line in text.splitlines() if line.split()[:1] in  # noqa: E731
                          (["users"], ["agents"], ["devices"], ["configs"], ["global_roles"])]  # fmt: skip
    assert table(dry) == table(real)
    assert "users                  3            2         1         0" in real


async def test_dry_run_on_a_database_without_schema_creates_nothing(
    mariadb: MariaDb, fresh_db: DatabaseSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    await fill_manager(mariadb)
    code, out = await migrate(capsys, "mysql-to-pg", *mariadb.flags(), *pg_flags(fresh_db), "--dry-run")
    assert code == 0, out
    assert "the target has no schema yet" in out
    conn = await connect(fresh_db)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
    finally:
        await conn.close()


async def test_rerun_changes_nothing_then_takes_source_changes(
    mariadb: MariaDb, db: DatabaseSettings, pg: asyncpg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    await fill_manager(mariadb)
    before = await mariadb.checksums()
    assert (await migrate(capsys, "mysql-to-pg", *mariadb.flags(), *pg_flags(db)))[0] == 0
    snapshot = [tuple(r) for r in await pg.fetch("SELECT * FROM users ORDER BY id")]
    code, out = await migrate(capsys, "mysql-to-pg", *mariadb.flags(), *pg_flags(db))
    assert code == 0, out
    assert "users                  3            0         0         3" in out
    assert [tuple(r) for r in await pg.fetch("SELECT * FROM users ORDER BY id")] == snapshot  # not even updated_at
    assert await mariadb.checksums() == before  # the source is only read
    await mariadb.execute("UPDATE users SET email = 'new@example.cn' WHERE id = 2")
    code, out = await migrate(capsys, "mysql-to-pg", *mariadb.flags(), *pg_flags(db))
    assert "users                  3            0         1         2" in out
    assert await pg.fetchval("SELECT email FROM users WHERE id = 2") == "new@example.cn"
    assert await pg.fetchval("SELECT count(*) FROM users") == 3


async def test_interrupted_run_then_rerun_converges(
    mariadb: MariaDb, db: DatabaseSettings, pg: asyncpg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [(i, f"user{i}", "pw", None, "user", T0, T0) for i in range(1, 2001)]
    for i in range(0, len(rows), 500):
        await mariadb.insert("users", rows[i : i + 500])
    task = asyncio.create_task(migrate(capsys, "mysql-to-pg", *mariadb.flags(), *pg_flags(db), "--batch-size", "20"))
    await wait_for_rows(pg, "SELECT count(*) FROM users", 100)
    task.cancel()  # Ctrl+C / SIGTERM cancel the command the same way
    with pytest.raises(asyncio.CancelledError):
        await task
    partial = await pg.fetchval("SELECT count(*) FROM users")
    assert 100 <= partial < 2000
    assert partial % 20 == 0  # whole batches only: each is one transaction
    code, out = await migrate(capsys, "mysql-to-pg", *mariadb.flags(), *pg_flags(db))
    assert code == 0, out
    assert f"users              2,000        {2000 - partial:>5,}         0     {partial:>5,}" in out
    assert await pg.fetchval("SELECT count(*), count(DISTINCT username) FROM users") == 2000
    assert await pg.fetchval("SELECT nextval('users_id_seq')") == 2001


async def test_a_key_taken_by_another_id_in_the_target_skips_the_row(
    mariadb: MariaDb, db: DatabaseSettings, pg: asyncpg.Connection, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    await fill_manager(mariadb)
    await pg.execute("INSERT INTO users (id, username) VALUES (50, 'admin')")  # the new server's own admin
    report = tmp_path / "r.jsonl"
    code, out = await migrate(capsys, "mysql-to-pg", *mariadb.flags(), *pg_flags(db), "--report", str(report))
    assert code == 3, out
    [entry] = [e for e in report_entries(report) if e["action"] == "skipped"]
    assert entry == {"action": "skipped", "table": "users", "id": 1,
                     "reason": "duplicate username 'admin': the target's users.id 50 has it"}  # fmt: skip
    # user 1 is not there, so its agent and device keep no reference to it
    assert await pg.fetchval("SELECT user_id FROM agents WHERE id = 1") is None


async def test_duplicate_keys_inside_the_source_keep_the_lowest_id(
    mariadb: MariaDb, db: DatabaseSettings, pg: asyncpg.Connection, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    await mariadb.insert("configs", [
        (1, "llm", "a", "same", "openai", "{}", 1, b"\x00", T0, T0),
        (2, "llm", "b", "same", "openai", "{}", 1, b"\x00", T0, T0),
    ])  # fmt: skip
    report = tmp_path / "r.jsonl"
    flags = [*mariadb.flags(), *pg_flags(db), "--report", str(report)]
    dry_code, _ = await migrate(capsys, "mysql-to-pg", *flags, "--dry-run", "--tables", "configs")
    code, _ = await migrate(capsys, "mysql-to-pg", *flags, "--tables", "configs")
    assert dry_code == code == 3
    assert await pg.fetchval("SELECT name FROM configs WHERE config_id = 'same'") == "a"
    reasons = [e["reason"] for e in report_entries(report)]
    assert reasons == ["duplicate type/config_id ('llm', 'same'): source id 1 has it and is migrated"] * 2


async def test_expected_failures_print_one_error_line(
    mariadb: MariaDb, db: DatabaseSettings, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # the real process: exit status 1, one line, no traceback
    wrong_port = await migrate_process(
        "mysql-to-pg", "--mysql-host", "127.0.0.1", "--mysql-port", "1", *pg_flags(db), cwd=tmp_path
    )
    assert wrong_port.returncode == 1
    assert wrong_port.stderr.startswith("error: MySQL root@127.0.0.1:1/xiaozhi_admin is unreachable")
    assert "Traceback" not in wrong_port.stderr and len(wrong_port.stderr.splitlines()) == 1
    # the same command function in-process, for the other failures
    denied = await migrate_failure(
        capsys, "mysql-to-pg", *mariadb.flags()[:-4], "--mysql-password", "wrong", "--mysql-db", mariadb.database,
        *pg_flags(db),
    )  # fmt: skip
    assert denied == (1, f"error: MySQL root@127.0.0.1:3306/{mariadb.database}: access denied "
                         "(check --mysql-user / --mysql-password)\n")  # fmt: skip
    missing_db = await migrate_failure(
        capsys, "mysql-to-pg", *mariadb.flags()[:-2], "--mysql-db", "nope", *pg_flags(db)
    )
    assert missing_db == (1, "error: MySQL root@127.0.0.1:3306/nope: database does not exist\n")
    code, err = await migrate_failure(
        capsys, "mysql-to-pg", *mariadb.flags(), "--pg-host", "127.0.0.1", "--pg-port", "1"
    )
    assert code == 1 and err.startswith("error: target PostgreSQL xiaozhi@127.0.0.1:1/xiaozhi_admin is unreachable")
    code, err = await migrate_failure(capsys, "mysql-to-pg", "--tables", "users,sessions")
    assert code == 2 and "unknown table(s) sessions" in err
    assert report_files(tmp_path) == []  # nothing to report, no report file
