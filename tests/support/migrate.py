"""Helpers for the migration tests: a scratch MariaDB database, Redis keys under a test prefix, and running
``xiaozhi migrate …`` in-process (the command functions the CLI runs) or as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncmy
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from server.cli.main import build_parser
from server.config import DatabaseSettings, load_settings

MYSQL_HOST = os.environ.get("XIAOZHI_TEST_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("XIAOZHI_TEST_MYSQL_PORT", "3306"))
REDIS_URL = os.environ.get("XIAOZHI_TEST_REDIS", "redis://127.0.0.1:6379/0")
REPO = Path(__file__).resolve().parents[2]

# The manager's tables as GORM creates them in MySQL (unsigned ids, 0 for "no agent", datetime(3)).
MANAGER_DDL = [
    """CREATE TABLE users (id bigint unsigned AUTO_INCREMENT PRIMARY KEY, username varchar(191),
       password varchar(255), email varchar(191), role varchar(32), created_at datetime(3),
       updated_at datetime(3))""",
    """CREATE TABLE agents (id bigint unsigned AUTO_INCREMENT PRIMARY KEY,
       user_id bigint unsigned NOT NULL DEFAULT 0, name varchar(191), custom_prompt text,
       llm_config_id varchar(191), tts_config_id varchar(191),
       asr_speed varchar(32), status varchar(32), created_at datetime(3), updated_at datetime(3))""",
    """CREATE TABLE devices (id bigint unsigned AUTO_INCREMENT PRIMARY KEY, user_id bigint unsigned NOT NULL DEFAULT 0,
       agent_id bigint unsigned NOT NULL DEFAULT 0, device_code varchar(191), device_name varchar(191),
       challenge varchar(255), pre_secret_key varchar(255), activated tinyint(1), last_active_at datetime(3),
       created_at datetime(3), updated_at datetime(3), UNIQUE KEY (device_code))""",
    """CREATE TABLE configs (id bigint unsigned AUTO_INCREMENT PRIMARY KEY, type varchar(32), name varchar(191),
       config_id varchar(191), provider varchar(64), json_data text, enabled tinyint(1), is_default bit(1),
       created_at datetime(3), updated_at datetime(3))""",
    """CREATE TABLE global_roles (id bigint unsigned AUTO_INCREMENT PRIMARY KEY, name varchar(191),
       description text, prompt blob, is_default tinyint(1), created_at datetime(3), updated_at timestamp(3) NULL)""",
]


@dataclass
class MariaDb:
    database: str
    conn: Any

    async def execute(self, sql: str, args: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        async with self.conn.cursor() as cur:
            await cur.execute(sql, args)
            return list(await cur.fetchall())

    async def insert(self, table: str, rows: Sequence[Sequence[Any]]) -> None:
        marks = "(" + ", ".join(["%s"] * len(rows[0])) + ")"
        values = ", ".join([marks] * len(rows))
        await self.execute(f"INSERT INTO `{table}` VALUES {values}", [v for r in rows for v in r])

    async def checksums(self) -> dict[str, int]:
        rows = await self.execute("CHECKSUM TABLE users, agents, devices, configs, global_roles EXTENDED")
        return {r[0].decode() if isinstance(r[0], bytes) else r[0]: r[1] for r in rows}

    def flags(self) -> list[str]:
        return ["--mysql-host", MYSQL_HOST, "--mysql-port", str(MYSQL_PORT), "--mysql-user", "root",
                "--mysql-password", "", "--mysql-db", self.database]  # fmt: skip


@asynccontextmanager
async def scratch_mariadb(*, manager_tables: bool = True) -> AsyncIterator[MariaDb]:
    """A uniquely named MariaDB database (dropped afterwards), with the manager's empty tables."""
    try:
        conn = await asyncmy.connect(host=MYSQL_HOST, port=MYSQL_PORT, user="root", password="", autocommit=True)
    except Exception as exc:
        pytest.fail(f"no MariaDB at {MYSQL_HOST}:{MYSQL_PORT} ({exc}): .ci/run starts it; start it by hand outside CI")
    name = f"xz_mig_{uuid.uuid4().hex[:12]}"
    db = MariaDb(name, conn)
    try:
        await db.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        await db.execute(f"USE `{name}`")
        if manager_tables:
            for ddl in MANAGER_DDL:
                await db.execute(ddl)
        yield db
    finally:
        # a migration the test left running would hold its snapshot's metadata locks: end it first
        for (other,) in await db.execute(
            "SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()", (name,)
        ):
            await db.execute(f"KILL {int(other)}")
        await db.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


@asynccontextmanager
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (RedisConnectionError, OSError):
        await client.aclose()
        pytest.fail(f"no Redis at {REDIS_URL}: .ci/run starts it; start it by hand outside CI")
    try:
        yield client
    finally:
        await client.aclose()


async def delete_prefix(client: aioredis.Redis, prefix: str) -> None:
    keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await client.delete(*keys)


async def snapshot_redis(client: aioredis.Redis, prefix: str) -> dict[bytes, Any]:
    """Type, content and TTL of every key under the prefix (to show a migration changed nothing)."""
    out: dict[bytes, Any] = {}
    async for key in client.scan_iter(match=f"{prefix}*", count=1000):
        kind = (await client.type(key)).decode()
        if kind == "zset":
            value: Any = await client.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            value = await client.lrange(key, 0, -1)
        elif kind == "string":
            value = await client.get(key)
        else:
            value = await client.dump(key)
        out[key] = (kind, value, await client.ttl(key))
    return out


def eino(role: str, content: str = "", **extra: Any) -> bytes:
    return json.dumps({"role": role, "content": content, **extra}, ensure_ascii=False).encode()


def pg_flags(db: DatabaseSettings) -> list[str]:
    return ["--pg-host", db.host, "--pg-port", str(db.port), "--pg-user", db.username,
            "--pg-password", db.password.get_secret_value(), "--pg-db", db.database]  # fmt: skip


async def migrate(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run ``xiaozhi migrate ARGV`` in-process (the same command function the CLI runs); (exit, stdout).
    The progress bars go to stderr."""
    capsys.readouterr()
    args = build_parser().parse_args(["migrate", *argv])
    code = await args.run(args, load_settings(env={}))
    return code, capsys.readouterr().out


async def migrate_failure(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run ``xiaozhi migrate ARGV`` in-process; (exit, stderr). Flag errors exit through argparse (status 2)."""
    capsys.readouterr()
    try:
        args = build_parser().parse_args(["migrate", *argv])
        code = await args.run(args, load_settings(env={}))
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


async def migrate_process(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the real ``xiaozhi migrate`` command as a process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "REDIS_", "XIAOZHI_CONFIG", "MYSQL_"))}
    env["PYTHONPATH"] = str(REPO)
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "server.cli.main", "migrate", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
    )


async def wait_for_rows(conn: Any, sql: str, at_least: int, timeout: float = 30.0) -> None:
    """Poll a count query until it reaches ``at_least`` (a migration running in another task)."""
    async with asyncio.timeout(timeout):
        while await conn.fetchval(sql) < at_least:  # noqa: ASYNC110 - the rows appear in another connection
            await asyncio.sleep(0.005)


def report_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jsonl"))


def report_entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


async def messages_schema(conn: Any) -> set[str]:
    """conversation_messages' indexes and constraints, as PostgreSQL defines them."""
    rows = await conn.fetch(
        "SELECT indexname || ': ' || indexdef FROM pg_indexes WHERE tablename = 'conversation_messages' "
        "UNION ALL SELECT conname || ': ' || pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = 'conversation_messages'::regclass"
    )
    return {r[0] for r in rows}
