from __future__ import annotations

import asyncpg
import pytest

from server.config import DatabaseSettings
from server.storage import schema
from server.storage.db import connect
from server.storage.errors import SchemaError
from tests.support.migrate import messages_schema

EXPECTED_TABLES = {
    "users",
    "devices",
    "agents",
    "configs",
    "global_roles",
    "conversation_sessions",
    "conversation_messages",
    "system_prompts",
    "audio_files",
    "schema_migrations",
}


async def test_upgrade_creates_every_table_and_rerun_is_a_no_op(fresh_db: DatabaseSettings) -> None:
    conn = await connect(fresh_db)
    try:
        before = await schema.status(conn)
        assert before.current == 0 and before.pending
        applied = await schema.upgrade(conn)
        assert [m.version for m in applied] == list(range(1, before.latest + 1))
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
        assert tables >= EXPECTED_TABLES
        assert await schema.upgrade(conn) == []
        after = await schema.status(conn)
        assert after.up_to_date and after.current == before.latest
    finally:
        await conn.close()


async def test_require_current_names_the_command_on_an_empty_database(fresh_db: DatabaseSettings) -> None:
    conn = await connect(fresh_db)
    try:
        with pytest.raises(SchemaError, match="xiaozhi db upgrade"):
            await schema.require_current(conn)
    finally:
        await conn.close()


async def test_altered_applied_migration_is_refused(db: DatabaseSettings) -> None:
    conn = await connect(db)
    try:
        await conn.execute("UPDATE schema_migrations SET checksum = 'x' WHERE version = 1")
        with pytest.raises(SchemaError, match="differ"):
            await schema.upgrade(conn)
    finally:
        await conn.close()


async def test_newer_database_than_program_is_refused(db: DatabaseSettings) -> None:
    conn = await connect(db)
    try:
        await conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (999, 'future', 'x')")
        with pytest.raises(SchemaError, match="newer than this program"):
            await schema.status(conn)
    finally:
        await conn.close()


async def test_concurrent_upgrades_apply_each_version_once(fresh_db: DatabaseSettings) -> None:
    import asyncio

    conns = [await connect(fresh_db) for _ in range(3)]
    try:
        results = await asyncio.gather(*(schema.upgrade(c) for c in conns))
        assert sorted(len(r) for r in results)[:2] == [0, 0]
        rows = await conns[0].fetch("SELECT version FROM schema_migrations")
        assert len(rows) == len(schema.load_migrations())
    finally:
        for c in conns:
            await c.close()


async def test_integrity_constraints_the_references_lacked(db: DatabaseSettings) -> None:
    conn = await connect(db)
    try:
        await conn.execute("INSERT INTO conversation_sessions (session_id, device_id) VALUES ('s1', 'd1')")
        insert = (
            "INSERT INTO conversation_messages (session_id, device_id, message_id, sequence_num, role)"
            " VALUES ($1, 'd1', $2, $3, 'user')"
        )
        await conn.execute(insert, "s1", "m1", 1)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(insert, "s1", "m2", 1)
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute(insert, "no-such-session", "m3", 1)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO conversation_messages (session_id, device_id, message_id, sequence_num, role)"
                " VALUES ('s1', 'd1', 'm4', 2, 'robot')"
            )
    finally:
        await conn.close()


async def test_a_bulk_loads_dropped_indexes_are_reported_and_rebuilt_exactly(db: DatabaseSettings) -> None:
    conn = await connect(db)
    try:
        original = await messages_schema(conn)
        dropped = await schema.drop_deferrable(conn, "conversation_messages")
        assert set(dropped) == {item.name for item in schema.DEFERRABLE}
        left = " ".join(await messages_schema(conn))
        assert not [name for name in dropped if name in left]
        state = await schema.status(conn)
        assert sorted(state.missing) == sorted(dropped) and not state.up_to_date
        await schema.upgrade(conn)  # what `xiaozhi db upgrade` and every server start run
        assert await messages_schema(conn) == original
        assert (await schema.status(conn)).up_to_date
    finally:
        await conn.close()


async def test_a_table_that_holds_rows_keeps_its_indexes(db: DatabaseSettings) -> None:
    conn = await connect(db)
    try:
        await conn.execute("INSERT INTO conversation_sessions (session_id, device_id) VALUES ('s1', 'd1')")
        await conn.execute(
            "INSERT INTO conversation_messages (session_id, device_id, message_id, sequence_num, role, content) "
            "VALUES ('s1', 'd1', 'm1', 1, 'user', 'hello')"
        )
        original = await messages_schema(conn)
        assert await schema.drop_deferrable(conn, "conversation_messages") == []
        assert await messages_schema(conn) == original
    finally:
        await conn.close()


async def test_rebuilding_side_by_side_on_two_connections(db: DatabaseSettings) -> None:
    first, second = await connect(db), await connect(db)
    try:
        original = await messages_schema(first)
        await schema.drop_deferrable(first, "conversation_messages")
        built = await schema.build_missing(first, second)
        assert sorted(built) == sorted(item.name for item in schema.DEFERRABLE)
        assert await messages_schema(first) == original
        assert await schema.build_missing(first, second) == []
    finally:
        await first.close()
        await second.close()
