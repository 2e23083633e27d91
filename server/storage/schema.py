"""Versioned SQL schema (S6): numbered files in ``migrations/`` applied once each, in order.

``upgrade`` takes an advisory lock so several servers starting together apply each version once;
re-running is a no-op. A changed file for an applied version is reported, never re-applied.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources

import asyncpg

from server.storage.errors import SchemaError

_LOCK_KEY = 0x7869616F7A6869  # "xiaozhi"
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Deferrable:
    """An index or foreign key that a bulk load into an empty table may drop and build once at the end, as
    pg_restore does: a GIN index built over the loaded rows costs a third of updating it row by row, and one
    foreign-key validation costs far less than a check per row. ``create`` must build exactly what the
    migration files built (a test compares the two schemas)."""

    name: str
    table: str
    create: str
    constraint: bool = False  # a table constraint (pg_constraint), not an index

    async def exists(self, conn: asyncpg.Connection) -> bool:
        if self.constraint:
            sql = "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = $1 AND conrelid = to_regclass($2))"
            return bool(await conn.fetchval(sql, self.name, self.table))
        return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", self.name))

    def drop(self) -> str:
        if self.constraint:
            return f"ALTER TABLE {self.table} DROP CONSTRAINT {self.name}"
        return f"DROP INDEX {self.name}"


# In build order: constraints first (adding one locks out index builds), then the longest build first.
DEFERRABLE: tuple[Deferrable, ...] = (
    Deferrable(
        "conversation_messages_session_id_fkey",
        "conversation_messages",
        "ALTER TABLE conversation_messages ADD CONSTRAINT conversation_messages_session_id_fkey "
        "FOREIGN KEY (session_id) REFERENCES conversation_sessions(session_id) ON DELETE CASCADE",
        constraint=True,
    ),
    Deferrable(
        "conversation_messages_content_trgm_idx",
        "conversation_messages",
        "CREATE INDEX conversation_messages_content_trgm_idx ON conversation_messages USING gin (content gin_trgm_ops)",
    ),
    Deferrable(
        "conversation_messages_device_idx",
        "conversation_messages",
        "CREATE INDEX conversation_messages_device_idx ON conversation_messages (device_id, created_at)",
    ),
    Deferrable(
        "conversation_messages_created_idx",
        "conversation_messages",
        "CREATE INDEX conversation_messages_created_idx ON conversation_messages (created_at)",
    ),
)
# Memory for building them (PostgreSQL's default of 64 MB makes a build over millions of rows spill).
_BUILD_MEMORY = "256MB"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class SchemaStatus:
    current: int
    latest: int
    applied: list[tuple[int, str, datetime]]
    pending: list[Migration]
    modified: list[int]
    missing: list[str] = field(default_factory=list)  # deferrable indexes/constraints a bulk load dropped

    @property
    def up_to_date(self) -> bool:
        return self.current == self.latest and not self.modified and not self.missing


def load_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("server.storage").joinpath("migrations").iterdir():
        match = _FILE_RE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise SchemaError(f"migration files are not numbered 1..n without gaps: {versions}")
    return found


async def _ensure_table(conn: asyncpg.Connection) -> None:
    await conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version     integer PRIMARY KEY,
               name        text NOT NULL,
               checksum    text NOT NULL,
               applied_at  timestamptz NOT NULL DEFAULT now())"""
    )


async def status(conn: asyncpg.Connection) -> SchemaStatus:
    migrations = load_migrations()
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    rows = (
        await conn.fetch("SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version")
        if exists
        else []
    )
    by_version = {m.version: m for m in migrations}
    applied = [(r["version"], r["name"], r["applied_at"]) for r in rows]
    done = {r["version"] for r in rows}
    modified = [
        r["version"] for r in rows if r["version"] in by_version and by_version[r["version"]].checksum != r["checksum"]
    ]
    current = max(done, default=0)
    latest = migrations[-1].version if migrations else 0
    if current > latest:
        raise SchemaError(
            f"database schema version {current} is newer than this program knows ({latest}); upgrade the program"
        )
    pending = [m for m in migrations if m.version not in done]
    return SchemaStatus(current, latest, applied, pending, modified, await missing_deferred(conn))


async def missing_deferred(conn: asyncpg.Connection) -> list[str]:
    """The deferrable indexes and constraints whose table exists but which do not (a bulk load dropped them)."""
    missing = []
    for item in DEFERRABLE:
        if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", item.table) and not await item.exists(conn):
            missing.append(item.name)
    return missing


async def drop_deferrable(conn: asyncpg.Connection, table: str) -> list[str]:
    """Drop ``table``'s deferrable indexes and constraints if the table is empty (a bulk load is about to fill
    it); return the names dropped. A table that holds rows keeps them: building them again would cost more than
    it saves."""
    items = [item for item in DEFERRABLE if item.table == table]
    dropped = []
    async with conn.transaction():
        await conn.execute(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")  # nobody adds a row meanwhile
        if not items or await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})"):
            return []
        for item in items:
            if await item.exists(conn):
                await conn.execute(item.drop())
                dropped.append(item.name)
    return dropped


async def build_missing(conn: asyncpg.Connection, *more: asyncpg.Connection) -> list[str]:
    """Build the deferrable indexes and constraints that are missing; return their names. Given ``more``
    connections, indexes are built side by side (PostgreSQL builds one GIN index on one core)."""
    missing = set(await missing_deferred(conn))
    todo = [item for item in DEFERRABLE if item.name in missing]
    for item in [i for i in todo if i.constraint]:
        await _build(conn, item)
    queue = [i for i in todo if not i.constraint]

    async def worker(c: asyncpg.Connection) -> None:
        while queue:
            await _build(c, queue.pop(0), helpers=not more)

    await asyncio.gather(*(worker(c) for c in (conn, *more)))
    return [item.name for item in todo]


async def _build(conn: asyncpg.Connection, item: Deferrable, *, helpers: bool = True) -> None:
    # The connection may have plans pinned to index scans (the migration's); a build wants PostgreSQL's own.
    # Builds side by side each keep to one process: a B-tree's parallel helpers would take the core the GIN
    # build runs on.
    async with conn.transaction():
        await conn.execute(
            f"SET LOCAL maintenance_work_mem = '{_BUILD_MEMORY}'; SET LOCAL enable_seqscan = on; "
            "SET LOCAL enable_hashjoin = on; SET LOCAL enable_mergejoin = on"
            + ("" if helpers else "; SET LOCAL max_parallel_maintenance_workers = 0")
        )
        await conn.execute(item.create)


async def upgrade(conn: asyncpg.Connection) -> list[Migration]:
    """Apply every pending migration, each in its own transaction, and build any deferrable index or constraint
    that is missing; return the migrations applied."""
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await _ensure_table(conn)
        state = await status(conn)
        if state.modified:
            raise SchemaError(
                f"applied schema version(s) {state.modified} differ from this program's files; refusing to upgrade"
            )
        for migration in state.pending:
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
        await build_missing(conn)
        return state.pending
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def require_current(conn: asyncpg.Connection) -> None:
    """Fail clearly when the database was never upgraded (instead of 'relation does not exist' later)."""
    state = await status(conn)
    if state.pending:
        raise SchemaError(
            f"database schema is at version {state.current}, this program needs {state.latest}: "
            "run 'xiaozhi db upgrade'"
        )
