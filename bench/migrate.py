"""Migration benchmark: ``xiaozhi migrate redis-to-pg`` and ``mysql-to-pg`` on generated deployments.

    python -m bench.migrate [--messages 1000000] [--devices 2000] [--rows 300000] [--skip-mysql] [--skip-redis]

Fills Redis with the Go server's layout (one ``<prefix>:llm:<device>`` sorted set per device, a system prompt
per device, a few malformed members) and MariaDB with the manager's tables, then runs the real commands as
child processes and times them end to end (start-up included). Prints ``BENCH <name> <value> <unit>`` lines
(and ``<name>_goal_met``) on stdout; progress on stderr. Peak memory is the child's own ``ru_maxrss``:
the histories grow with ``--messages`` (devices stay fixed), so it shows whether memory grows with the data.

Everything it creates is removed at the end: the PostgreSQL databases ``xz_bench_mig_<random>``, the
MariaDB database of the same name, the Redis keys ``xzbench-mig-<random>:*`` (by SCAN; never FLUSHDB).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import asyncmy
import asyncpg
import redis.asyncio as aioredis

from bench.data import build_dataset
from server.storage.db import execute_each

DEFAULT_PG = os.environ.get("XIAOZHI_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
DEFAULT_REDIS = os.environ.get("XIAOZHI_BENCH_REDIS", "redis://127.0.0.1:6379/0")
DEFAULT_MYSQL = os.environ.get("XIAOZHI_BENCH_MYSQL", "root@127.0.0.1:3306")
GOALS = {"redis_to_pg_msgs_per_s": 50_000, "mysql_to_pg_rows_per_s": 20_000}
BAD_EVERY = 20_000  # one malformed member per this many (invalid JSON or an unknown role)
REPO = Path(__file__).resolve().parents[1]
_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def emit(name: str, value: float, unit: str) -> None:
    shown = f"{value:.0f}" if unit.endswith("/s") else f"{value:.1f}"
    print(f"BENCH {name} {shown} {unit}", flush=True)
    if name in GOALS:
        met = value >= GOALS[name]
        print(f"BENCH {name}_goal_met {int(met)} bool", flush=True)
        if not met:
            log(f"GOAL MISSED: {name} = {shown} {unit}, goal >= {GOALS[name]:,}")


class BenchFailure(Exception):
    """The migration did not produce what was generated: the figures would mean nothing."""


# ---- running the real command -------------------------------------------------------------------------


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy so far (Linux /proc/stat)."""
    with open("/proc/stat") as fh:
        ticks = [int(v) for v in fh.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def run_cli(args: list[str], workdir: Path) -> tuple[float, float, str]:
    """Run ``xiaozhi migrate …`` as a child; (wall seconds, peak RSS MB of the child, stdout). Logs how the
    machine's CPU was split: the command's own process, and everything else (PostgreSQL, Redis/MariaDB, others)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "REDIS_", "XIAOZHI_CONFIG"))}
    env["PYTHONPATH"] = str(REPO)
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        busy = machine_busy_s()
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli.main", "migrate", *args], cwd=workdir, env=env, stdout=out
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        busy = machine_busy_s() - busy
        own = usage.ru_utime + usage.ru_stime
        cores = os.cpu_count() or 1
        log(
            f"{args[0]}: {wall:.1f}s; CPU: the command {own:.1f}s ({own / wall:.0%} of a core), everything else "
            f"{busy - own:.1f}s ({(busy - own) / wall:.0%}); machine {busy / wall / cores:.0%} busy of {cores} cores"
        )
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode not in (0, 3):  # 3: finished, with skipped records (the malformed ones we planted)
        raise BenchFailure(f"migrate {args[0]} exited with {proc.returncode}:\n{text}")
    return wall, usage.ru_maxrss / 1024, text


# ---- Redis ------------------------------------------------------------------------------------------


def message_pool(seed: int) -> list[dict[str, Any]]:
    """~60k plausible eino messages (Chinese, English, tool calls) from the storage bench's generator."""
    data = build_dataset(sessions=3000, per_session=20, devices=50, now=time.time(), seed=seed)
    pool = []
    for plan in data.sessions:
        for role, content, tool_calls, tool_call_id in plan.messages:
            msg: dict[str, Any] = {"role": role, "content": content}
            if tool_calls:
                msg["tool_calls"] = tool_calls
            if tool_call_id:
                msg["tool_call_id"] = tool_call_id
            pool.append(msg)
    return pool


async def fill_redis(client: aioredis.Redis, prefix: str, *, messages: int, devices: int, seed: int) -> tuple[int, int]:
    """One sorted set per device with its whole history (sessions of 4–40 messages, hours apart), one system
    prompt per device. Returns (valid members, malformed members) as Redis holds them."""
    rng = random.Random(seed)
    pool = [json.dumps(m, ensure_ascii=False, separators=(",", ":")) for m in message_pool(seed)]
    macs = [":".join(f"{rng.getrandbits(8):02x}" for _ in range(6)) for _ in range(devices)]
    valid = bad = 0
    now_ns = time.time_ns()
    for i, device in enumerate(macs):
        share = messages // devices + (1 if i < messages % devices else 0)
        key = f"{prefix}:llm:{device}"
        t = now_ns - 400 * 86400 * 10**9 + rng.randrange(86400 * 10**9)
        seen: dict[str, int] = {}
        left_in_session = 0
        batch: dict[str, int] = {}
        for n in range(share):
            if left_in_session == 0:
                left_in_session = rng.randint(4, 40)
                t += rng.randint(1, 72) * 3600 * 10**9  # the device was idle for hours: a new conversation
            left_in_session -= 1
            t += rng.randint(1, 60) * 10**9
            if (valid + bad + 1) % BAD_EVERY == 0:
                member = '{"role":"robot","content":"?"}' if bad % 2 else '{"role":"user","content":"cut'
                member += " " * n  # unique within the set
                bad += 1
            else:
                member = rng.choice(pool)
                k = seen.get(member, 0)
                seen[member] = k + 1
                member += " " * k  # as our Redis memory keeps identical messages apart (JSON ignores the spaces)
                valid += 1
            batch[member] = t
            if len(batch) >= 5000:
                await client.zadd(key, batch)
                batch = {}
        if batch:
            await client.zadd(key, batch)
        await client.set(f"{prefix}:llm:system:{device}", f"你是小智，设备 {device} 的语音助手。")
        if i % 200 == 0:
            log(f"redis fill: {i:,}/{devices:,} devices, {valid + bad:,} members")
    return valid, bad


async def drop_redis(client: aioredis.Redis, prefix: str) -> None:
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
    for i in range(0, len(keys), 1000):
        await client.delete(*keys[i : i + 1000])


async def bench_redis(args: argparse.Namespace, pg_db: str, workdir: Path) -> None:
    client = aioredis.from_url(args.redis)
    prefix = f"xzbench-mig-{uuid.uuid4().hex[:10]}"
    pg = _pg_flags(args.pg, pg_db)
    url = urlparse(args.redis)
    redis_flags = ["--redis-host", url.hostname or "127.0.0.1", "--redis-port", str(url.port or 6379)]
    redis_flags += ["--redis-db", url.path.strip("/") or "0", "--key-prefix", prefix]
    try:
        t = time.perf_counter()
        valid, bad = await fill_redis(client, prefix, messages=args.messages, devices=args.devices, seed=args.seed)
        log(f"redis filled: {valid:,} messages + {bad} malformed on {args.devices:,} devices in "
            f"{time.perf_counter() - t:.0f}s")  # fmt: skip
        wall, rss, out = run_cli(["redis-to-pg", *redis_flags, *pg, "--batch-size", str(args.batch_size)], workdir)
        log("redis-to-pg output:\n" + out)
        stored = await _pg_count(args.pg, pg_db, "conversation_messages")
        if stored != valid:
            raise BenchFailure(f"PostgreSQL holds {stored:,} messages, Redis {valid:,} valid ones")
        emit("redis_to_pg_msgs_per_s", (valid + bad) / wall, "msgs/s")
        emit("redis_to_pg_seconds", wall, "s")
        emit("redis_to_pg_peak_rss_mb", rss, "MB")
        if args.rerun:
            wall, rss, out = run_cli(["redis-to-pg", *redis_flags, *pg, "--batch-size", str(args.batch_size)], workdir)
            if "0 inserted" not in out or await _pg_count(args.pg, pg_db, "conversation_messages") != valid:
                raise BenchFailure("the re-run changed the target:\n" + out)
            emit("redis_to_pg_rerun_msgs_per_s", (valid + bad) / wall, "msgs/s")
    finally:
        await drop_redis(client, prefix)
        await client.aclose()


# ---- MySQL ------------------------------------------------------------------------------------------

MYSQL_DDL = [
    """CREATE TABLE users (id bigint unsigned AUTO_INCREMENT PRIMARY KEY, username varchar(191) NOT NULL,
       password varchar(255) NOT NULL, email varchar(191), role varchar(32) NOT NULL DEFAULT 'user',
       created_at datetime(3), updated_at datetime(3), UNIQUE KEY (username))""",
    """CREATE TABLE agents (id bigint unsigned AUTO_INCREMENT PRIMARY KEY, user_id bigint unsigned NOT NULL,
       name varchar(191) NOT NULL, custom_prompt text, llm_config_id varchar(191), tts_config_id varchar(191),
       asr_speed varchar(32), status varchar(32), created_at datetime(3), updated_at datetime(3))""",
    """CREATE TABLE devices (id bigint unsigned AUTO_INCREMENT PRIMARY KEY, user_id bigint unsigned NOT NULL,
       agent_id bigint unsigned NOT NULL DEFAULT 0, device_code varchar(191), device_name varchar(191),
       challenge varchar(255), pre_secret_key varchar(255), activated tinyint(1), last_active_at datetime(3),
       created_at datetime(3), updated_at datetime(3), UNIQUE KEY (device_code))""",
    """CREATE TABLE configs (id bigint unsigned AUTO_INCREMENT PRIMARY KEY, type varchar(32) NOT NULL,
       name varchar(191) NOT NULL, config_id varchar(191) NOT NULL, provider varchar(64), json_data json,
       enabled tinyint(1), is_default tinyint(1), created_at datetime(3), updated_at datetime(3),
       UNIQUE KEY (type, config_id))""",
    """CREATE TABLE global_roles (id bigint unsigned AUTO_INCREMENT PRIMARY KEY, name varchar(191) NOT NULL,
       description text, prompt text, is_default tinyint(1), created_at datetime(3), updated_at datetime(3))""",
]
SHARES = {"users": 0.1, "agents": 0.1, "devices": 0.6, "configs": 0.1, "global_roles": 0.1}


def mysql_rows(table: str, n: int, counts: dict[str, int], rng: random.Random) -> list[tuple[Any, ...]]:
    stamp = "2025-06-01 08:00:00.000"
    rows: list[tuple[Any, ...]] = []
    for i in range(1, n + 1):
        if table == "users":
            rows.append((i, f"user{i}", "$2a$10$" + "x" * 53, f"u{i}@example.cn", "user", stamp, stamp))
        elif table == "agents":
            rows.append((i, rng.randint(1, counts["users"]), f"小智 {i}", "你是一个乐于助人的助手。" * 3,
                         "qwen", "edge", "normal", "active", stamp, stamp))  # fmt: skip
        elif table == "devices":
            mac = f"{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}:{rng.getrandbits(24):06x}"
            rows.append((i, rng.randint(1, counts["users"]), rng.randint(0, counts["agents"]), f"{mac}-{i}",
                         f"kitchen {i}", "c" * 16, "k" * 32, 1, stamp, stamp, stamp))  # fmt: skip
        elif table == "configs":
            data = json.dumps({"model": "qwen2.5", "temperature": 0.7, "i": i})
            rows.append((i, "llm", f"config {i}", f"cfg-{i}", "openai", data, 1, 0, stamp, stamp))
        else:
            rows.append((i, f"角色 {i}", "description", "prompt " * 20, 0, stamp, stamp))
    return rows


async def fill_mysql(host: str, port: int, user: str, db: str, rows: int, seed: int) -> int:
    rng = random.Random(seed)
    conn = await asyncmy.connect(host=host, port=port, user=user, password="", autocommit=True)
    total = 0
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4")
            await cur.execute(f"USE `{db}`")
            for ddl in MYSQL_DDL:
                await cur.execute(ddl)
            counts = {t: max(1, int(rows * share)) for t, share in SHARES.items()}
            for table, n in counts.items():
                data = mysql_rows(table, n, counts, rng)
                marks = "(" + ", ".join(["%s"] * len(data[0])) + ")"
                for i in range(0, len(data), 2000):
                    part = data[i : i + 2000]
                    await cur.execute(
                        f"INSERT INTO `{table}` VALUES {', '.join([marks] * len(part))}", [x for r in part for x in r]
                    )
                total += n
    finally:
        conn.close()
    return total


async def bench_mysql(args: argparse.Namespace, pg_db: str, workdir: Path) -> None:
    user, _, hostport = args.mysql.partition("@")
    host, _, port = hostport.partition(":")
    db = pg_db
    try:
        t = time.perf_counter()
        total = await fill_mysql(host, int(port or 3306), user, db, args.rows, args.seed)
        log(f"mysql filled: {total:,} rows in {time.perf_counter() - t:.0f}s")
        mysql_flags = ["--mysql-host", host, "--mysql-port", port or "3306", "--mysql-user", user, "--mysql-db", db]
        pg = _pg_flags(args.pg, pg_db)
        wall, rss, out = run_cli(["mysql-to-pg", *mysql_flags, *pg, "--batch-size", str(args.batch_size)], workdir)
        log("mysql-to-pg output:\n" + out)
        stored = sum([await _pg_count(args.pg, pg_db, t) for t in SHARES])
        if stored != total:
            raise BenchFailure(f"PostgreSQL holds {stored:,} rows, MySQL {total:,}")
        emit("mysql_to_pg_rows_per_s", total / wall, "rows/s")
        emit("mysql_to_pg_seconds", wall, "s")
        emit("mysql_to_pg_peak_rss_mb", rss, "MB")
    finally:
        conn = await asyncmy.connect(host=host, port=int(port or 3306), user=user, password="", autocommit=True)
        async with conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
        conn.close()


# ---- PostgreSQL -------------------------------------------------------------------------------------


def _pg_flags(admin_dsn: str, db: str) -> list[str]:
    url = urlparse(admin_dsn)
    return ["--pg-host", url.hostname or "127.0.0.1", "--pg-port", str(url.port or 5432),
            "--pg-user", url.username or "postgres", "--pg-password", url.password or "", "--pg-db", db]  # fmt: skip


async def _pg_count(admin_dsn: str, db: str, table: str) -> int:
    conn = await asyncpg.connect(admin_dsn.rsplit("/", 1)[0] + f"/{db}")
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


async def run(args: argparse.Namespace, workdir: Path) -> None:
    names = []
    try:
        for kind, wanted in (("redis", not args.skip_redis), ("mysql", not args.skip_mysql)):
            if not wanted:
                continue
            name = f"xz_bench_mig_{uuid.uuid4().hex[:10]}"
            await execute_each(args.pg, f'CREATE DATABASE "{name}"')
            names.append(name)
            log(f"created database {name}")
            await (bench_redis if kind == "redis" else bench_mysql)(args, name, workdir)
    finally:
        for name in names:
            await execute_each(args.pg, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            log(f"dropped database {name}")


def remove_workdir(workdir: Path) -> None:
    for report in workdir.glob("*.jsonl"):
        log(f"report {report.name}: {sum(1 for _ in report.open(encoding='utf-8'))} lines")
        report.unlink()
    workdir.rmdir()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.migrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=1_000_000, help="Redis messages (peak memory: try 1M and 5M)")
    p.add_argument("--devices", type=int, default=2000, help="devices (fixed: more messages = longer histories)")
    p.add_argument("--rows", type=int, default=300_000, help="MySQL rows over the five tables")
    p.add_argument("--batch-size", type=int, default=5000, help="the commands' --batch-size")
    p.add_argument("--rerun", action="store_true", help="also time a re-run of redis-to-pg (must insert nothing)")
    p.add_argument("--skip-redis", action="store_true")
    p.add_argument("--skip-mysql", action="store_true")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--pg", default=DEFAULT_PG, help="admin DSN (env XIAOZHI_BENCH_PG)")
    p.add_argument("--redis", default=DEFAULT_REDIS, help="Redis URL (env XIAOZHI_BENCH_REDIS)")
    p.add_argument("--mysql", default=DEFAULT_MYSQL, help="user@host:port, empty password (env XIAOZHI_BENCH_MYSQL)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="xz-bench-migrate-"))
    try:
        asyncio.run(run(args, workdir))
    except BenchFailure as exc:
        log(f"BENCH FAILED: {exc}")
        raise SystemExit(1) from None
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted")
        raise SystemExit(130) from None
    finally:
        remove_workdir(workdir)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
