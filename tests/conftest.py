"""Shared fixtures: every test gets its own fresh PostgreSQL database (dropped after), cloned from a
template that has the schema applied once per run. PostgreSQL is the machine's (127.0.0.1:5432,
trust) or, where none is reachable, an embedded one started for the run."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from server.config import ENV_OVERRIDES, DatabaseSettings, MinioSettings, PoolSettings
from server.storage import schema
from server.storage.audio_store import AudioStore
from server.storage.conversation_store import ConversationStore
from server.storage.db import create_pool, execute_each, settings_from_dsn

PG_ADMIN_DSN = os.environ.get("XIAOZHI_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the developer's real configuration and data out of tests."""
    for name in [*ENV_OVERRIDES, "XIAOZHI_CONFIG"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XIAOZHI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)


async def _reachable(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


@pytest.fixture(scope="session")
def pg_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if asyncio.run(_reachable(PG_ADMIN_DSN)):
        yield PG_ADMIN_DSN
        return
    from server.services.embedded_postgres import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path_factory.mktemp("embedded-pg") / "data")
    server.start()
    try:
        yield server.dsn
    finally:
        server.stop()


def settings_for(dsn: str, database: str) -> DatabaseSettings:
    return settings_from_dsn(dsn, database=database, pool=PoolSettings(min_idle=1, max_open=20))


@pytest.fixture(scope="session")
def pg_template(pg_admin_dsn: str) -> Iterator[str]:
    """A database with the schema applied, cloned by each test (CREATE DATABASE … TEMPLATE)."""
    name = f"xz_tpl_{uuid.uuid4().hex[:12]}"

    async def build() -> None:
        await execute_each(pg_admin_dsn, f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(pg_admin_dsn.rsplit("/", 1)[0] + f"/{name}")
        try:
            await schema.upgrade(conn)
        finally:
            await conn.close()

    asyncio.run(build())
    yield name
    asyncio.run(execute_each(pg_admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def fresh_db(pg_admin_dsn: str) -> AsyncIterator[DatabaseSettings]:
    """An empty database (no schema), dropped after the test."""
    name = f"xz_t_{uuid.uuid4().hex[:12]}"
    await execute_each(pg_admin_dsn, f'CREATE DATABASE "{name}"')
    try:
        yield settings_for(pg_admin_dsn, name)
    finally:
        await execute_each(pg_admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def db(pg_admin_dsn: str, pg_template: str) -> AsyncIterator[DatabaseSettings]:
    """A fresh database with the current schema, dropped after the test."""
    name = f"xz_t_{uuid.uuid4().hex[:12]}"
    await execute_each(pg_admin_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    try:
        yield settings_for(pg_admin_dsn, name)
    finally:
        await execute_each(pg_admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def pool(db: DatabaseSettings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(db, min_size=1)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def store(pool: asyncpg.Pool) -> ConversationStore:
    return ConversationStore(pool)


# ---- S3 ------------------------------------------------------------------------------------------

S3_ACCESS_KEY = "xiaozhi-test"
S3_SECRET_KEY = "xiaozhi-test-secret-0123456789"


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 server (SeaweedFS ``weed mini``) for the whole run."""
    from server.services.embedded_s3 import EmbeddedS3

    server = EmbeddedS3(tmp_path_factory.mktemp("s3"), access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY)
    server.start()
    try:
        yield server.endpoint
    finally:
        server.stop()


def minio_settings(endpoint: str, bucket: str | None = None) -> MinioSettings:
    return MinioSettings(
        endpoint=endpoint,
        access_key_id=S3_ACCESS_KEY,
        secret_access_key=S3_SECRET_KEY,
        bucket_audio=bucket or f"xz-{uuid.uuid4().hex[:12]}",
    )


@pytest.fixture
async def audio_store(s3_endpoint: str, store: ConversationStore) -> AsyncIterator[AudioStore]:
    """An AudioStore on its own fresh bucket."""
    audio = AudioStore(minio_settings(s3_endpoint), store)
    await audio.start()
    try:
        yield audio
    finally:
        audio.close()
