"""Choose and build the memory provider (S7, S10).

Precedence: ``memory.provider`` set in the config file (or by ``MEMORY_PROVIDER``) wins. When it was left
at its default, an enabled default ``configs`` row of type ``memory`` — what the manager UI writes —
selects the provider; for ``redis`` its ``json_data`` may carry ``host``, ``port``, ``password``, ``db``
and ``key_prefix``. For ``postgres`` the row's connection keys are not used: memory reads the server's own
conversation store, which is where the history is written.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.config import ConfigError, RedisSettings, Settings
from server.memory.base import MemoryProvider
from server.memory.nomemo import NoMemory
from server.memory.postgres import PostgresMemory
from server.memory.redis_store import RedisMemory
from server.storage.conversation_store import ConversationStore
from server.storage.errors import StorageUnavailable

log = logging.getLogger(__name__)

PROVIDERS: tuple[str, ...] = ("postgres", "redis", "nomemo")
REDIS_CONNECTION_KEYS: tuple[str, ...] = ("host", "port", "password", "db")

_DEFAULT_ROW_SQL = """
SELECT id, config_id, name, provider, json_data FROM configs
WHERE type = 'memory' AND enabled AND is_default ORDER BY id
"""


def redis_client_from_settings(settings: RedisSettings) -> aioredis.Redis:
    """An asyncio Redis client for ``settings`` (connects lazily, on the first command)."""
    return aioredis.Redis(
        host=settings.host,
        port=settings.port,
        password=settings.password.get_secret_value() or None,
        db=settings.db,
        socket_connect_timeout=5.0,
        socket_timeout=10.0,
    )


async def default_memory_row(pool: asyncpg.Pool | asyncpg.Connection) -> dict[str, Any] | None:
    """The enabled default ``configs`` row of type ``memory`` (the lowest id if several), or None.

    ``json_data`` is returned as a dict whether or not the connection decodes jsonb.
    """
    try:
        rows = await pool.fetch(_DEFAULT_ROW_SQL)
    except asyncpg.UndefinedTableError:
        return None
    if not rows:
        return None
    if len(rows) > 1:
        log.warning(
            "%d enabled default memory configs (ids %s); using id %d",
            len(rows),
            ", ".join(str(r["id"]) for r in rows),
            rows[0]["id"],
        )
    row = dict(rows[0])
    data = row["json_data"]
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except ValueError:
            data = None
    if not isinstance(data, dict):
        raise ConfigError(f"{_row_source(row)}: json_data must be a JSON object, got {type(data).__name__}")
    row["json_data"] = data
    return row


def _row_source(row: dict[str, Any]) -> str:
    return f"configs row id={row['id']} (type 'memory', config_id {row['config_id']!r})"


async def memory_from_settings(
    settings: Settings,
    *,
    store: ConversationStore | None,
    redis_client: aioredis.Redis | None = None,
    pool: asyncpg.Pool | None = None,
) -> MemoryProvider:
    """Build the provider ``settings`` (or the default memory ``configs`` row) asks for.

    ``pool`` is where the ``configs`` row is looked up (default: the store's pool). ``redis_client`` is used
    for redis unless the row names its own server; a client built here is owned (closed) by the provider.
    Raises ConfigError naming the config source for an unknown provider or a missing store/connection.
    """
    memory = settings.memory
    row: dict[str, Any] | None = None
    if "provider" in memory.model_fields_set:
        provider: Any = memory.provider
        source = f"{settings.source}: memory.provider"
    else:
        lookup = pool if pool is not None else (store.pool if store is not None else None)
        if lookup is not None:
            row = await default_memory_row(lookup)
        if row is None:
            provider, source = memory.provider, f"{settings.source}: memory.provider (default)"
        else:
            provider, source = row["provider"], _row_source(row)
    name = provider.strip().lower() if isinstance(provider, str) else provider
    if name not in PROVIDERS:
        raise ConfigError(f"{source}: unknown memory provider {provider!r}; allowed: {', '.join(PROVIDERS)}")
    log.info("memory provider %s (from %s)", name, source)

    if name == "nomemo":
        return NoMemory()
    if name == "postgres":
        if store is None:
            raise ConfigError(
                f"{source}: memory provider 'postgres' needs the PostgreSQL conversation store, which this "
                "process does not have (check the database section)"
            )
        if row is not None and any(k in row["json_data"] for k in ("host", "port", "database")):
            log.info("%s: its connection keys are not used; memory reads this server's conversation store", source)
        return PostgresMemory(store, search_days=memory.search_days)
    return await _redis_memory(settings, source, row, redis_client)


async def _redis_memory(
    settings: Settings, source: str, row: dict[str, Any] | None, redis_client: aioredis.Redis | None
) -> RedisMemory:
    given = {
        k: v
        for k, v in (row["json_data"] if row is not None else {}).items()
        if k in (*REDIS_CONNECTION_KEYS, "key_prefix") and v is not None and v != ""
    }
    base = settings.redis.model_dump() if settings.redis is not None else {}
    try:
        redis_settings = RedisSettings.model_validate({**base, **given})
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid redis connection in json_data: {_explain(exc)}") from None

    if any(k in given for k in REDIS_CONNECTION_KEYS) or (redis_client is None and settings.redis is not None):
        client = redis_client_from_settings(redis_settings)
        where = f"Redis {redis_settings.host}:{redis_settings.port} db {redis_settings.db}"
        try:
            await client.ping()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            await client.aclose()
            raise StorageUnavailable(f"{source}: {where} is unreachable: {exc}") from None
        return RedisMemory(
            client,
            key_prefix=redis_settings.key_prefix,
            search_days=settings.memory.search_days,
            owns_client=True,
        )
    if redis_client is not None:
        return RedisMemory(redis_client, key_prefix=redis_settings.key_prefix, search_days=settings.memory.search_days)
    hint = " or host/port in the row's json_data" if row is not None else ""
    raise ConfigError(
        f"{source}: memory provider 'redis' needs a Redis connection: add a 'redis' section "
        f"(host, port, password, db, key_prefix) to the config file{hint}"
    )


def _explain(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        shown = "" if "password" in key else f" (got {err.get('input')!r})"
        problems.append(f"{key}: {err['msg']}{shown}")
    return "; ".join(problems)
