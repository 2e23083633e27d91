"""Versioned SQL schema (S6): numbered files in ``migrations/`` applied once each, in order.

``upgrade`` takes an advisory lock so several servers starting together apply each version once;
re-running is a no-op. A changed file for an applied version is reported, never re-applied.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

import asyncpg

from server.storage.errors import SchemaError

_LOCK_KEY = 0x7869616F7A6869  # "xiaozhi"
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


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

    @property
    def up_to_date(self) -> bool:
        return self.current == self.latest and not self.modified


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
    return SchemaStatus(current, latest, applied, [m for m in migrations if m.version not in done], modified)


async def upgrade(conn: asyncpg.Connection) -> list[Migration]:
    """Apply every pending migration, each in its own transaction; return what was applied."""
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
