"""asyncpg pool creation from settings (S22) with one clear error when PostgreSQL is unreachable."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

import asyncpg

from server.config import DatabaseSettings, PoolSettings
from server.storage.errors import StorageUnavailable

log = logging.getLogger(__name__)

# Errors that mean "the server is not there right now" rather than "this statement is wrong".
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    # Concurrent writers (several servers) may collide; the whole batch is simply retried.
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT_ERRORS)


def describe(settings: DatabaseSettings) -> str:
    """Where we connect, without secrets (for logs and error messages)."""
    return f"PostgreSQL {settings.username}@{settings.host}:{settings.port}/{settings.database}"


def connect_kwargs(settings: DatabaseSettings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "user": settings.username,
        "password": settings.password.get_secret_value() or None,
        "database": settings.database,
        "timeout": settings.pool.connect_timeout_s,
        "command_timeout": settings.pool.command_timeout_s,
        "server_settings": {"application_name": "xiaozhi-console"},
    }
    if settings.ssl_mode == "disable":
        kwargs["ssl"] = False
    elif settings.ssl_mode == "require":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        kwargs["ssl"] = ctx
    elif settings.ssl_mode == "verify-ca":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        kwargs["ssl"] = ctx
    else:
        kwargs["ssl"] = ssl.create_default_context()
    return kwargs


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=_dumps, decoder=json.loads, schema="pg_catalog")


async def _reset_connection(conn: asyncpg.Connection) -> None:
    """On release to the pool: only undo an open transaction. asyncpg's default reset sends one more
    statement on every release (measured: 20% of a last-20-messages read); we keep no session state
    on pooled connections (LISTEN and advisory locks use their own connections or undo themselves)."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@contextmanager
def _reachable(settings: DatabaseSettings) -> Iterator[None]:
    """Turn connection failures into one StorageUnavailable line naming the server."""
    try:
        yield
    except asyncpg.InvalidPasswordError:
        raise StorageUnavailable(f"{describe(settings)}: password authentication failed") from None
    except asyncpg.InvalidCatalogNameError:
        raise StorageUnavailable(f"{describe(settings)}: database does not exist") from None
    except TRANSIENT_ERRORS as exc:
        reason = str(exc) or type(exc).__name__
        raise StorageUnavailable(f"{describe(settings)} is unreachable: {reason}") from None


async def create_pool(settings: DatabaseSettings, *, min_size: int | None = None) -> asyncpg.Pool:
    """Open the pool; raise StorageUnavailable naming the server when it cannot be reached."""
    pool_cfg = settings.pool
    wanted_min = pool_cfg.min_idle if min_size is None else min_size
    with _reachable(settings):
        pool = await asyncpg.create_pool(
            **connect_kwargs(settings),
            min_size=min(wanted_min, pool_cfg.max_open),
            max_size=pool_cfg.max_open,
            max_inactive_connection_lifetime=pool_cfg.max_lifetime_s,
            init=_init_connection,
            reset=_reset_connection,
        )
    assert pool is not None
    log.info("connected to %s (pool %d–%d)", describe(settings), wanted_min, pool_cfg.max_open)
    return pool


async def connect(settings: DatabaseSettings) -> asyncpg.Connection:
    with _reachable(settings):
        conn = await asyncpg.connect(**connect_kwargs(settings))
    await _init_connection(conn)
    return conn


def settings_from_dsn(dsn: str, *, database: str, pool: PoolSettings | None = None) -> DatabaseSettings:
    """DatabaseSettings for another database on the server a ``postgresql://user:pw@host:port/db`` DSN names."""
    url = urlparse(dsn)
    return DatabaseSettings(
        host=url.hostname or "127.0.0.1",
        port=url.port or 5432,
        username=url.username or "postgres",
        password=url.password or "",
        database=database,
        pool=pool or PoolSettings(),
    )


async def execute_each(dsn: str, *statements: str) -> None:
    """Run statements one by one on a throwaway connection (CREATE/DROP DATABASE cannot run in a pool's)."""
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()
