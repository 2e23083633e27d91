"""The PostgreSQL target: connection from the ``--pg-*`` flags, our schema, and a few counts."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg

from server.config import DatabaseSettings, PoolSettings
from server.migrate.errors import MigrationError
from server.storage import schema
from server.storage.db import TRANSIENT_ERRORS, connect, describe
from server.storage.errors import StorageError

T = TypeVar("T")

# A migration's batches are big and few: give a statement minutes, not the server's 30 s.
MIGRATION_POOL = PoolSettings(min_idle=1, max_open=2, command_timeout_s=600.0, connect_timeout_s=10.0)


def target_settings(
    base: DatabaseSettings,
    *,
    host: str | None = None,
    port: int | None = None,
    user: str | None = None,
    password: str | None = None,
    database: str | None = None,
    sslmode: str | None = None,
) -> DatabaseSettings:
    """The flags over the configuration's ``database`` section (which already has the DB_* environment)."""
    values = base.model_dump()
    values["password"] = base.password.get_secret_value()
    for name, value in (
        ("host", host), ("port", port), ("username", user), ("password", password), ("database", database),
        ("ssl_mode", sslmode),
    ):  # fmt: skip
        if value is not None:
            values[name] = value
    values["pool"] = MIGRATION_POOL
    values["embedded"] = False
    return DatabaseSettings.model_validate(values)


@dataclass
class Target:
    conn: asyncpg.Connection
    settings: DatabaseSettings
    schema_missing: bool  # dry run on a database without our schema: everything would be new

    def describe(self) -> str:
        return describe(self.settings)

    async def connect_more(self) -> asyncpg.Connection:
        """Another connection with the same session settings (parallel writers)."""
        try:
            conn = await connect(self.settings)
        except StorageError as exc:
            raise MigrationError(f"target {exc}") from None
        try:
            await _session_settings(conn)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def close(self) -> None:
        await self.conn.close()


async def open_target(settings: DatabaseSettings, *, dry_run: bool) -> Target:
    """Connect; bring the schema up to date unless this is a dry run (which must not write anything)."""
    try:
        conn = await connect(settings)
    except StorageError as exc:
        raise MigrationError(f"target {exc}") from None
    try:
        await _session_settings(conn, plans=False)
        if dry_run:
            state = await schema.status(conn)
            missing = state.current == 0
        else:
            await schema.upgrade(conn)
            missing = False
        await pin_index_plans(conn)
        return Target(conn, settings, schema_missing=missing)
    except BaseException:
        await conn.close()
        raise


async def _session_settings(conn: asyncpg.Connection, *, plans: bool = True) -> None:
    # A crash can lose the last batches' commits, never corrupt them; a re-run restores them.
    await conn.execute("SET synchronous_commit = off; SET application_name = 'xiaozhi-migrate'")
    # JSON travels as the source's text (no decode/encode round trip in Python)
    for name in ("json", "jsonb"):
        await conn.reset_type_codec(name, schema="pg_catalog")
    if plans:
        await pin_index_plans(conn)


async def pin_index_plans(conn: asyncpg.Connection) -> None:
    """Every statement of the migration finds its rows through a unique index, a batch at a time. During a
    bulk load the target's statistics are stale (or autovacuum is off) and the planner, believing a table
    small, hashes or merges all of it for every batch, which makes a migration quadratic in its size. Only
    index plans are left; JIT is off because the disabled plans' penalty costs would trigger it."""
    await conn.execute("SET enable_hashjoin = off; SET enable_mergejoin = off; SET enable_seqscan = off; SET jit = off")


async def count_rows(conn: asyncpg.Connection, table: str) -> int:
    async with conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = on")  # counting all rows: a scan beats the pinned index plan
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))


async def on_target(work: Awaitable[T], *, during: str = "") -> T:
    """``work``, with a lost connection to the target turned into one line the operator can act on."""
    try:
        return await work
    except TRANSIENT_ERRORS as exc:
        raise MigrationError(
            f"lost the target PostgreSQL{during}: {exc or type(exc).__name__}; re-run the same command to continue "
            "(finished batches are kept, nothing is duplicated)"
        ) from None
