"""Storage benchmark: ingest through the event bus, reads, search and audio upload, on one fresh database.

    python -m bench.storage [--messages 1000000] [--sessions 50000] [--keep-db]

Prints one line per figure on stdout, ``BENCH <name> <value> <unit>``, and for each figure with a goal
``BENCH <name>_goal_met 1|0 bool``; progress goes to stderr. See bench/README.md for what each figure
means. The run creates its own database ``xz_bench_<random>`` (dropped at the end unless --keep-db),
its own Redis keys ``xzbench:<random>:*`` (deleted at the end) and its own S3 server in a temp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from bench.data import EN_TERMS, ZH_TERMS, Dataset, SessionPlan, build_dataset
from server.config import DatabaseSettings, MinioSettings, PoolSettings
from server.events.bus import EventBus
from server.events.handlers import StorageHandlers
from server.events.types import AddMessage
from server.storage import schema
from server.storage.conversation_store import ConversationStore
from server.storage.db import connect, create_pool, execute_each, settings_from_dsn
from server.storage.models import NewMessage, SessionFilter

DEFAULT_PG = os.environ.get("XIAOZHI_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
DEFAULT_REDIS = os.environ.get("XIAOZHI_BENCH_REDIS", "redis://127.0.0.1:6379/0")

# name → (comparison, target); a figure with a goal also gets a ``<name>_goal_met`` line.
GOALS: dict[str, tuple[str, float]] = {
    "ingest_bus_msgs_per_s": (">=", 20_000),
    "ingest_speedup_vs_naive": (">=", 10),
    "last20_p50_ms": ("<=", 1.0),
    "last20_vs_redis_ratio": ("<=", 2.0),
    "session_list_first_page_ms": ("<=", 20),
    "session_list_next_page_ms": ("<=", 20),
    "search_zh_p50_ms": ("<=", 150),
    "search_en_p50_ms": ("<=", 150),
    "upload_10s_clip_p50_ms": ("<=", 30),
}

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def emit(name: str, value: float, unit: str) -> None:
    shown = f"{value:.0f}" if unit == "msgs/s" else f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    print(f"BENCH {name} {shown} {unit}", flush=True)
    if name in GOALS:
        op, target = GOALS[name]
        met = value >= target if op == ">=" else value <= target
        print(f"BENCH {name}_goal_met {int(met)} bool", flush=True)
        if not met:
            log(f"GOAL MISSED: {name} = {shown} {unit}, goal {op} {target:g}")


def pct(values: list[float], q: float) -> float:
    """Percentile by linear interpolation (q in 0..100)."""
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values: list[float]) -> str:
    return (
        f"n={len(values)} p50={pct(values, 50):.3f} p90={pct(values, 90):.3f} p99={pct(values, 99):.3f} "
        f"max={max(values):.3f} ms"
    )


async def timed(fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    t = time.perf_counter()
    result = await fn()
    return (time.perf_counter() - t) * 1000, result


Snapshot = tuple[float, float, float, float, float]  # own, backends', other postgres, machine busy CPU s; wall s


class CpuMeter:
    """CPU time of this process, of some PostgreSQL backends and of the whole machine, from Linux /proc.

    Diagnostics only (stderr): how the CPU was split during a phase, and how much other programs took."""

    def __init__(self, backend_pids: list[int]) -> None:
        self.pids = backend_pids
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def _proc(self, pid: int | str) -> float:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / self.hz
        except (OSError, IndexError, ValueError):
            return 0.0

    def _machine(self) -> tuple[float, float]:
        try:
            with open("/proc/stat") as fh:
                ticks = [int(v) for v in fh.readline().split()[1:]]
            return sum(ticks) / self.hz, (ticks[3] + ticks[4]) / self.hz
        except (OSError, IndexError, ValueError):
            return 0.0, 0.0

    def _other_postgres(self) -> float:
        """WAL writer, checkpointer, autovacuum, parallel workers (and other databases' backends)."""
        total = 0.0
        for pid in os.listdir("/proc") if os.path.isdir("/proc") else []:
            if pid.isdigit() and int(pid) not in self.pids:
                with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if fh.read(9) == b"postgres:":
                        total += self._proc(pid)
        return total

    def snapshot(self) -> Snapshot:
        total, idle = self._machine()
        own, backends, others = self._proc("self"), sum(self._proc(p) for p in self.pids), self._other_postgres()
        return own, backends, others, total - idle, time.perf_counter()

    def report(self, label: str, before: Snapshot, n: int, after: Snapshot | None = None) -> None:
        after = after or self.snapshot()
        py, pg, pg_other, busy, wall = (a - b for a, b in zip(after, before, strict=True))
        if busy <= 0 or wall <= 0:
            return
        cores = os.cpu_count() or 1
        rest = max(0.0, busy - py - pg - pg_other)
        log(
            f"{label} CPU: python {py / n * 1e6:.0f} us/msg ({py / wall:.0%} of a core), its PostgreSQL backends "
            f"{pg / n * 1e6:.0f} us/msg ({pg / wall:.0%}); other postgres processes (WAL writer, checkpointer, "
            f"autovacuum, other databases) {pg_other / wall:.0%}; everything else (kernel, other programs) "
            f"{rest / wall:.0%}; machine {busy / wall / cores:.0%} busy of {cores} cores"
        )


class BenchFailure(Exception):
    """The bench could not measure what it claims (spooled, lost or wrong rows): the run stops with exit status 1."""


# ---- database -----------------------------------------------------------------------------------


def settings_for(admin_dsn: str, database: str, pool_size: int) -> DatabaseSettings:
    pool = PoolSettings(min_idle=pool_size, max_open=pool_size, command_timeout_s=300)
    return settings_from_dsn(admin_dsn, database=database, pool=pool)


# ---- ingest through the event bus -------------------------------------------------------------------


def interleave(plans: list[SessionPlan], concurrency: int) -> Iterator[tuple[SessionPlan, int]]:
    """Many devices talking at once: ``concurrency`` sessions are live; each round, every live session
    says its next message; a finished session's slot goes to the next one (in start-time order)."""
    queue = iter(plans)
    live: list[list[Any]] = [[p, 0] for p in (next(queue, None) for _ in range(concurrency)) if p is not None]
    while live:
        keep = []
        for slot in live:
            plan, index = slot
            yield plan, index
            index += 1
            if index < len(plan.messages):
                slot[1] = index
                keep.append(slot)
            else:
                nxt = next(queue, None)
                if nxt is not None:
                    keep.append([nxt, 0])
        live = keep


def make_message(plan: SessionPlan, index: int) -> NewMessage:
    """What a device server builds when a turn is done (ASR result, LLM reply, tool result)."""
    role, content, tool_calls, tool_call_id = plan.messages[index]
    return NewMessage(
        session_id=plan.session_id,
        device_id=plan.device_id,
        role=role,  # type: ignore[arg-type]
        content=content,
        tool_calls=tool_calls,
        tool_call_id=tool_call_id,
        created_at=datetime.fromtimestamp(plan.start_ts + plan.offsets[index], UTC),
        agent_id=plan.agent_id,
    )


async def progress(label: str, count: Callable[[], int], total: int, every: float = 5.0) -> None:
    start, last_n, last_t = time.perf_counter(), 0, time.perf_counter()
    while True:
        await asyncio.sleep(every)
        now, n = time.perf_counter(), count()
        log(
            f"{label}: {n:,}/{total:,} written ({n / total:.0%}), {(n - last_n) / (now - last_t):,.0f} msgs/s now, "
            f"{n / (now - start):,.0f} msgs/s overall"
        )
        last_n, last_t = n, now


async def ingest_bus(store: ConversationStore, data: Dataset, args: argparse.Namespace, spool: Path) -> float:
    async with store.pool.acquire() as conn:
        pids = [r[0] for r in await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")]
    meter = CpuMeter(pids)
    bus = EventBus(
        StorageHandlers(store), spool, shards=args.shards, batch_size=args.batch_size, queue_size=args.queue_size
    )
    await bus.start()
    total = data.message_count
    # Pace the producer so the bus never has to spool: publish() spools when a shard's queue is full.
    # Shard queues hold queue_size // shards events each; stay well below that on the total.
    high, low = args.queue_size // 3, args.queue_size // 6
    ticker = asyncio.create_task(progress("bus ingest", lambda: bus.stats.written, total))
    publish = bus.publish
    try:
        cpu0 = meter.snapshot()
        t0 = time.perf_counter()
        n = 0
        for plan, index in interleave(data.sessions, args.concurrency):
            publish(AddMessage(make_message(plan, index)))
            n += 1
            if n % 500 == 0:
                if bus.queued > high:
                    while bus.queued > low:  # noqa: ASYNC110 - polling the bus's public backlog is the point
                        await asyncio.sleep(0.001)
                else:
                    await asyncio.sleep(0)  # let the shard workers take their batches
        await bus.drain(timeout=3600)
        elapsed = time.perf_counter() - t0
    finally:
        ticker.cancel()
        await bus.close()
    stats = bus.stats
    log(f"bus stats: {stats}")
    if stats.spooled or stats.lost or stats.dead or stats.written != total or n != total:
        raise BenchFailure(f"event bus did not write every message directly: {stats} (published {n} of {total})")
    rate = total / elapsed
    log(f"bus ingest: {total:,} messages in {elapsed:.1f}s = {rate:,.0f} msgs/s")
    meter.report("bus ingest", cpu0, total)
    return rate


async def verify_ingest(conn: asyncpg.Connection, data: Dataset) -> None:
    rows, sessions = await conn.fetchrow("SELECT count(*), count(DISTINCT session_id) FROM conversation_messages")
    agg = await conn.fetchrow(
        "SELECT count(*) AS n, sum(message_count) AS msgs, min(last_seq) AS lo, max(last_seq) AS hi, "
        "sum(tool_call_count) AS tools FROM conversation_sessions"
    )
    per = len(data.sessions[0].messages)
    want_tools = sum(1 for s in data.sessions for m in s.messages if m[2])
    log(f"verify: {rows:,} messages in {sessions:,} sessions; session counters {dict(agg)}")
    if (
        rows != data.message_count
        or sessions != len(data.sessions)
        or agg["msgs"] != rows
        or (agg["lo"], agg["hi"]) != (per, per)
        or agg["tools"] != want_tools
    ):
        raise BenchFailure("stored messages or session counters do not match what was published")
    # The bus promises per-session order: sequence numbers must follow each session's publish (= time) order.
    disorder = await conn.fetchval(
        """SELECT count(*) FROM (SELECT created_at < lag(created_at) OVER w AS bad FROM conversation_messages
                                 WINDOW w AS (PARTITION BY session_id ORDER BY sequence_num)) AS x WHERE bad"""
    )
    if disorder:
        raise BenchFailure(f"{disorder} messages were stored out of their session's order")


# ---- naive reference ----------------------------------------------------------------------------------

NAIVE_DDL = """
CREATE TABLE naive_sessions (
    id bigserial PRIMARY KEY, session_id varchar(64) NOT NULL UNIQUE, device_id varchar(128) NOT NULL,
    agent_id varchar(128), user_id bigint, started_at timestamptz NOT NULL DEFAULT now(), ended_at timestamptz,
    status varchar(20) NOT NULL DEFAULT 'active', metadata jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON naive_sessions (started_at DESC, id DESC);
CREATE INDEX ON naive_sessions (device_id, started_at DESC, id DESC);
CREATE TABLE naive_messages (
    id bigserial PRIMARY KEY,
    session_id varchar(64) NOT NULL REFERENCES naive_sessions(session_id) ON DELETE CASCADE,
    device_id varchar(128) NOT NULL, message_id varchar(64) NOT NULL UNIQUE,
    sequence_num bigint NOT NULL CHECK (sequence_num > 0),
    role varchar(20) NOT NULL CHECK (role IN ('user', 'assistant', 'system', 'tool')),
    content text NOT NULL DEFAULT '', multi_content jsonb, tool_calls jsonb, tool_call_id varchar(64),
    audio_file_id varchar(128), metadata jsonb NOT NULL DEFAULT '{}', created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (session_id, sequence_num));
CREATE INDEX ON naive_messages (device_id, created_at);
CREATE INDEX ON naive_messages (created_at);
CREATE INDEX ON naive_messages USING gin (content gin_trgm_ops);
"""
# The Go reference's pg_memory.AddMessage (upstream-storage.md §3.4–3.5), statement for statement:
# ensure the session row (GORM FirstOrCreate: SELECT, INSERT when missing), then
# SELECT COALESCE(MAX(sequence_num), 0) + 1, then the INSERT (GORM wraps Create in its own transaction).
NAIVE_FIND_SESSION = "SELECT id FROM naive_sessions WHERE session_id = $1 LIMIT 1"
NAIVE_SESSION = """INSERT INTO naive_sessions (session_id, device_id, agent_id, started_at) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (session_id) DO NOTHING"""
NAIVE_NEXT_SEQ = "SELECT COALESCE(MAX(sequence_num), 0) + 1 FROM naive_messages WHERE session_id = $1"
NAIVE_MESSAGE = """
INSERT INTO naive_messages (session_id, device_id, message_id, sequence_num, role, content, multi_content, tool_calls,
                            tool_call_id, metadata, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9, coalesce($10::jsonb, '{}'::jsonb), $11)
RETURNING id"""


async def ingest_naive(settings: DatabaseSettings, data: Dataset, args: argparse.Namespace) -> float:
    """The reference's write path, per message: find/create the session, MAX()+1, INSERT in its own transaction.

    A session always goes to the same worker (as the bus shards do): two workers computing MAX()+1 for
    one session at once would collide on UNIQUE (session_id, sequence_num) — the reference's race."""
    per = len(data.sessions[0].messages)
    plans = data.sessions[: max(1, args.naive_sample // per)]
    total = sum(len(p.messages) for p in plans)
    conns = [await connect(settings) for _ in range(args.naive_workers)]
    queues: list[asyncio.Queue[tuple[bool, NewMessage] | None]] = [asyncio.Queue(maxsize=2000) for _ in conns]
    done = 0

    async def worker(conn: asyncpg.Connection, queue: asyncio.Queue[tuple[bool, NewMessage] | None]) -> None:
        nonlocal done
        while (item := await queue.get()) is not None:
            _, m = item
            m.validate()
            if await conn.fetchval(NAIVE_FIND_SESSION, m.session_id) is None:
                await conn.execute(NAIVE_SESSION, m.session_id, m.device_id, m.agent_id, m.created_at)
            seq = await conn.fetchval(NAIVE_NEXT_SEQ, m.session_id)
            async with conn.transaction():
                await conn.fetchval(
                    NAIVE_MESSAGE,
                    m.session_id,
                    m.device_id,
                    m.message_id,
                    seq,
                    m.role,
                    m.content,
                    m.multi_content,
                    m.tool_calls,
                    m.tool_call_id,
                    m.metadata,
                    m.created_at,
                )
            done += 1

    async def produce() -> None:
        for plan, index in interleave(plans, args.concurrency):
            queue = queues[zlib.crc32(plan.session_id.encode()) % len(queues)]
            await queue.put((index == 0, make_message(plan, index)))
        for q in queues:
            await q.put(None)

    ticker = asyncio.create_task(progress("naive ingest", lambda: done, total))
    workers: list[asyncio.Task[None]] = []
    meter = CpuMeter([c.get_server_pid() for c in conns])
    try:
        cpu0 = meter.snapshot()
        t0 = time.perf_counter()
        workers = [asyncio.create_task(worker(c, q)) for c, q in zip(conns, queues, strict=True)]
        await asyncio.gather(produce(), *workers)  # a failing worker fails the run instead of hanging it
        elapsed = time.perf_counter() - t0
        cpu1 = meter.snapshot()  # before the connections (and their backends) go away
        stored, top = await conns[0].fetchrow("SELECT count(*), max(sequence_num) FROM naive_messages")
        if stored != total or top != per:
            raise BenchFailure(f"naive reference stored {stored} of {total} messages (max sequence {top})")
    finally:
        ticker.cancel()
        for task in workers:
            task.cancel()
        for c in conns:
            await c.close()
    rate = total / elapsed
    log(f"naive ingest: {total:,} messages, {args.naive_workers} workers, {elapsed:.1f}s = {rate:,.0f} msgs/s")
    meter.report("naive ingest", cpu0, total, cpu1)
    return rate


# ---- reads ------------------------------------------------------------------------------------------


async def bench_last20(
    store: ConversationStore, data: Dataset, args: argparse.Namespace, rng: random.Random
) -> tuple[list[str], float]:
    sample = rng.sample(data.sessions, min(args.read_sessions, len(data.sessions)))
    sids = [p.session_id for p in sample]
    # Warm: a live conversation reads its own history every turn, so its rows are in cache. Redis gets the same.
    for sid in sids:
        await store.last_messages(sid, 20)
    times = []
    for sid in sids:
        ms, rows = await timed(lambda sid=sid: store.last_messages(sid, 20))
        if len(rows) != min(20, len(data.sessions[0].messages)):
            raise BenchFailure(f"last_messages({sid}) returned {len(rows)} rows")
        times.append(ms)
    log(f"last_messages(20): {summary(times)}")
    emit("last20_p50_ms", pct(times, 50), "ms")
    emit("last20_p99_ms", pct(times, 99), "ms")
    return sids, pct(times, 50)


async def bench_redis(store: ConversationStore, sids: list[str], url: str) -> float:
    """The same sessions as ZSETs (member = message JSON, score = created_at in ns), read with one client."""
    client = aioredis.Redis.from_url(url)
    prefix = f"xzbench:{uuid.uuid4().hex[:12]}:"
    keys: list[str] = []
    try:
        for start in range(0, len(sids), 100):
            pipe = client.pipeline(transaction=False)
            for sid in sids[start : start + 100]:
                key = prefix + sid
                keys.append(key)
                members = {}
                for m in await store.timeline(sid):
                    body = {
                        "id": m.id,
                        "session_id": m.session_id,
                        "device_id": m.device_id,
                        "message_id": m.message_id,
                        "sequence_num": m.sequence_num,
                        "role": m.role,
                        "content": m.content,
                        "tool_calls": m.tool_calls,
                        "tool_call_id": m.tool_call_id,
                        "metadata": m.metadata,
                        "created_at": m.created_at.isoformat(),
                    }
                    ns = int(m.created_at.timestamp()) * 1_000_000_000 + m.created_at.microsecond * 1000
                    members[json.dumps(body, ensure_ascii=False, separators=(",", ":"))] = ns
                pipe.zadd(key, members)
            await pipe.execute()
        log(f"redis: loaded {len(keys):,} sessions under {prefix}*")

        async def last20(key: str) -> list[dict[str, Any]]:
            return [json.loads(m) for m in await client.zrange(key, -20, -1)]

        for key in keys:  # the same warm-up as PostgreSQL's: one untimed read of every measured session
            await last20(key)
        times = []
        for key in keys:
            ms, rows = await timed(lambda key=key: last20(key))
            if not rows:
                raise BenchFailure(f"redis key {key} is empty")
            times.append(ms)
        log(f"redis ZRANGE last 20 (+ json.loads): {summary(times)}")
        emit("redis_zrange_last20_p50_ms", pct(times, 50), "ms")
        return pct(times, 50)
    finally:
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
        leftovers = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
        if leftovers:
            await client.delete(*leftovers)
        await client.aclose()


async def bench_session_list(store: ConversationStore, data: Dataset, args: argparse.Namespace, rng: random.Random):
    span = data.end_ts - data.start_ts - 7 * 86400

    def window() -> tuple[datetime, datetime]:
        since = datetime.fromtimestamp(data.start_ts + rng.random() * span, UTC)
        return since, since + timedelta(days=7)

    def first_filters(n: int) -> list[SessionFilter]:
        # Someone looks up a device that talked that week: a random session's device, a 7-day window around it.
        out = []
        for plan in rng.sample(data.sessions, n):
            since = datetime.fromtimestamp(plan.start_ts - rng.random() * 7 * 86400, UTC)
            out.append(SessionFilter(device_id=plan.device_id, since=since, until=since + timedelta(days=7)))
        return out

    for f in first_filters(30):  # warm-up
        await store.list_sessions(f, limit=50)
    times, sizes = [], []
    for f in first_filters(args.list_queries):
        ms, page = await timed(lambda f=f: store.list_sessions(f, limit=50))
        times.append(ms)
        sizes.append(len(page.items))
    log(f"session list page 1 (device + 7 days): {summary(times)}; rows/page median {statistics.median(sizes)}")
    emit("session_list_first_page_ms", pct(times, 50), "ms")

    # Page 2 needs filters with > 50 rows: a 7-day window over all devices, or one of the busiest devices.
    ranked = sorted(data.sessions_per_device, key=data.sessions_per_device.__getitem__, reverse=True)
    busy = [d for d in ranked[:20] if data.sessions_per_device[d] > 50]
    nexts: list[SessionFilter] = []
    for i in range(args.list_queries + 30):
        if i % 2 or not busy:
            s, u = window()
            nexts.append(SessionFilter(since=s, until=u))
        else:
            nexts.append(SessionFilter(device_id=rng.choice(busy)))
    times, firsts = [], []
    for i, f in enumerate(nexts):
        ms1, page1 = await timed(lambda f=f: store.list_sessions(f, limit=50))
        if page1.next_cursor is None:
            raise BenchFailure(f"filter {f} has no second page")
        ms2, page2 = await timed(lambda f=f, c=page1.next_cursor: store.list_sessions(f, limit=50, cursor=c))
        last = (page1.items[-1].started_at, page1.items[-1].id)
        if not page2.items or (page2.items[0].started_at, page2.items[0].id) >= last:
            raise BenchFailure("keyset page 2 is not the continuation of page 1")
        if i >= 30:  # the first 30 warm up
            times.append(ms2)
            firsts.append(ms1)
    log(f"session list page 1 (7 days / busy device): {summary(firsts)}")
    log(f"session list page 2 via cursor: {summary(times)}")
    emit("session_list_next_page_ms", pct(times, 50), "ms")


async def bench_search(store: ConversationStore, args: argparse.Namespace, rng: random.Random) -> None:
    for term in ("你好", "hello", "小智", "thanks"):  # warm-up, terms not measured
        await store.search_messages(term, limit=50)
    for lang, terms in (("zh", ZH_TERMS), ("en", EN_TERMS)):
        per_term: dict[str, list[float]] = {t: [] for t in terms}
        hits: dict[str, int] = {}
        for _ in range(args.search_rounds):
            order = list(terms)
            rng.shuffle(order)
            for term in order:
                ms, found = await timed(lambda term=term: store.search_messages(term, limit=50))
                per_term[term].append(ms)
                hits[term] = len(found)
        times = [ms for v in per_term.values() for ms in v]
        detail = ", ".join(f"{t}={statistics.median(v):.1f}ms/{hits[t]}" for t, v in per_term.items())
        log(f"search {lang}: {summary(times)}")
        log(f"search {lang} per term (median ms / hits≤50): {detail}")
        emit(f"search_{lang}_p50_ms", pct(times, 50), "ms")


# ---- audio ------------------------------------------------------------------------------------------


async def bench_upload(store: ConversationStore, data: Dataset, args: argparse.Namespace, rng: random.Random):
    from server.services.embedded_s3 import EmbeddedS3
    from server.storage.audio_store import AudioStore
    from tests.support.audio import encode_opus

    packets = encode_opus(16000, 60, 10.02)
    if len(packets) != 167:
        raise BenchFailure(f"expected 167 opus packets for 10 s, got {len(packets)}")
    s3_dir = Path(tempfile.mkdtemp(prefix="xz-bench-s3-"))
    s3 = EmbeddedS3(s3_dir, access_key="xz-bench", secret_key=uuid.uuid4().hex)
    audio = None
    try:
        t = time.perf_counter()
        await asyncio.to_thread(s3.start)
        log(f"embedded S3 up at {s3.endpoint} in {time.perf_counter() - t:.1f}s")
        settings = MinioSettings(
            endpoint=s3.endpoint,
            access_key_id=s3.access_key,
            secret_access_key=s3.secret_key,
            bucket_audio=f"xz-bench-{uuid.uuid4().hex[:8]}",
        )
        audio = AudioStore(settings, store)
        await audio.start()
        targets = rng.sample(data.sessions, min(len(data.sessions), args.uploads + 10))
        user_msgs = await store.pool.fetch(
            "SELECT DISTINCT ON (session_id) session_id, device_id, message_id, created_at FROM conversation_messages "
            "WHERE session_id = ANY($1::text[]) AND role = 'user' ORDER BY session_id, sequence_num",
            [p.session_id for p in targets],
        )
        times = []
        for i, row in enumerate(user_msgs):
            ms, saved = await timed(
                lambda row=row: audio.save_opus_packets(
                    session_id=row["session_id"],
                    device_id=row["device_id"],
                    source="user",
                    packets=packets,
                    sample_rate=16000,
                    message_id=row["message_id"],
                    created_at=row["created_at"],
                )
            )
            if saved.duration_ms != 10_020:
                raise BenchFailure(f"uploaded clip has duration {saved.duration_ms} ms")
            if i >= 10:  # the first 10 warm up
                times.append(ms)
        size = saved.file_size
        log(f"upload 10 s clip ({size:,} bytes Ogg Opus, object + row + message link): {summary(times)}")
        emit("upload_10s_clip_p50_ms", pct(times, 50), "ms")
    finally:
        if audio is not None:
            audio.close()
        await asyncio.to_thread(s3.stop)
        shutil.rmtree(s3_dir, ignore_errors=True)


# ---- main -------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    # SIGTERM cancels the run like Ctrl+C does, so the database, Redis keys and S3 server are cleaned up.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    name = f"xz_bench_{uuid.uuid4().hex[:10]}"
    per = args.messages // args.sessions
    if per < 1 or args.messages % args.sessions:
        raise SystemExit("--messages must be a multiple of --sessions")
    t = time.perf_counter()
    data = build_dataset(sessions=args.sessions, per_session=per, devices=args.devices, now=time.time(), seed=args.seed)
    gc.collect()
    gc.freeze()  # the plan is the bench's own long-lived data: keep it out of the cyclic GC's way
    log(
        f"planned {data.message_count:,} messages in {len(data.sessions):,} sessions, {len(data.devices):,} devices, "
        f"{len(data.agents)} agents, {(data.end_ts - data.start_ts) / 86400:.0f} days in {time.perf_counter() - t:.1f}s"
    )
    await execute_each(args.pg, f'CREATE DATABASE "{name}"')
    log(f"created database {name}")
    settings = settings_for(args.pg, name, args.pool_size)
    spool = Path(tempfile.mkdtemp(prefix="xz-bench-spool-"))
    pool = None
    try:
        conn = await connect(settings)
        try:
            await schema.upgrade(conn)
            pool = await create_pool(settings)
            store = ConversationStore(pool)
            rng = random.Random(args.seed + 1)

            if args.naive_sample:
                await conn.execute(NAIVE_DDL)
                naive = await ingest_naive(settings, data, args)
                await conn.execute("CHECKPOINT")  # do not leave the naive run's dirty pages to the next phase

            log(
                f"bus ingest: shards={args.shards} batch_size={args.batch_size} queue_size={args.queue_size} "
                f"pool={args.pool_size} concurrency={args.concurrency}"
            )
            rate = await ingest_bus(store, data, args, spool)
            emit("ingest_bus_msgs_per_s", rate, "msgs/s")
            if args.naive_sample:
                emit("ingest_naive_msgs_per_s", naive, "msgs/s")
                emit("ingest_speedup_vs_naive", rate / naive, "x")
            await verify_ingest(conn, data)

            t = time.perf_counter()
            await conn.execute("ANALYZE")
            log(f"ANALYZE in {time.perf_counter() - t:.1f}s")

            sids, pg_p50 = await bench_last20(store, data, args, rng)
            redis_p50 = await bench_redis(store, sids, args.redis)
            emit("last20_vs_redis_ratio", pg_p50 / redis_p50, "x")
            await bench_session_list(store, data, args, rng)
            await bench_search(store, args, rng)
            if args.uploads:
                await bench_upload(store, data, args, rng)
        finally:
            await conn.close()
    finally:
        if pool is not None:
            await pool.close()
        shutil.rmtree(spool, ignore_errors=True)
        if args.keep_db:
            log(f"kept database {name}")
        else:
            await execute_each(args.pg, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            log(f"dropped database {name}")
    emit("peak_rss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "MB")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--sessions", type=int, default=50_000)
    p.add_argument("--keep-db", action="store_true", help="keep the xz_bench_* database for inspection")
    p.add_argument("--devices", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=2000, help="sessions talking at the same time")
    p.add_argument("--shards", type=int, default=4, help="event bus shards (concurrent write transactions)")
    p.add_argument("--batch-size", type=int, default=5000, help="event bus batch size (messages per transaction)")
    p.add_argument("--queue-size", type=int, default=120_000, help="event bus queue capacity (all shards)")
    p.add_argument("--pool-size", type=int, default=6, help="asyncpg pool size (min = max)")
    p.add_argument("--naive-sample", type=int, default=50_000, help="messages for the naive reference (0: skip)")
    p.add_argument("--naive-workers", type=int, default=10)
    p.add_argument("--read-sessions", type=int, default=2000, help="sessions for last-20 reads (PG and Redis)")
    p.add_argument("--list-queries", type=int, default=200)
    p.add_argument("--search-rounds", type=int, default=3, help="times each search term is timed")
    p.add_argument("--uploads", type=int, default=100, help="10 s clips to upload (0: skip S3)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--pg", default=DEFAULT_PG, help="admin DSN (env XIAOZHI_BENCH_PG)")
    p.add_argument("--redis", default=DEFAULT_REDIS, help="Redis URL (env XIAOZHI_BENCH_REDIS)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        asyncio.run(run(args))
    except BenchFailure as exc:
        log(f"BENCH FAILED: {exc}")
        raise SystemExit(1) from None
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted")
        raise SystemExit(130) from None


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
