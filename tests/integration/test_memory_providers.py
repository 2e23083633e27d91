"""Memory providers (S7–S10) against real PostgreSQL and real Redis.

Redis tests use a random key prefix per test and delete exactly those keys afterwards (never FLUSHDB).
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from server.config import ConfigError, MemorySettings, RedisSettings, Settings, load_settings
from server.memory.base import MemoryKey, MemoryMessage, MemoryProvider, as_key, memory_terms
from server.memory.factory import memory_from_settings, redis_client_from_settings
from server.memory.nomemo import NoMemory
from server.memory.postgres import PostgresMemory
from server.memory.redis_store import RedisMemory
from server.storage.conversation_store import ConversationStore
from server.storage.errors import InvalidInput, StorageError, StorageUnavailable
from server.storage.models import NewMessage

REDIS_URL = os.environ.get("XIAOZHI_TEST_REDIS", "redis://127.0.0.1:6379/0")
DEVICE = "aa:bb:cc:dd:ee:01"
KEY = MemoryKey(DEVICE, "s1")
LINE = re.compile(r"^\[\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\] (user|assistant|tool|system): .*$")
TOOL_CALLS = [{"id": "c1", "type": "function", "function": {"name": "light", "arguments": '{"on":true}'}}]


def user(text: str, **kw) -> MemoryMessage:
    return MemoryMessage("user", text, **kw)


def assistant(text: str, **kw) -> MemoryMessage:
    return MemoryMessage("assistant", text, **kw)


def line_contents(lines: list[str]) -> list[str]:
    assert all(LINE.match(line) for line in lines), lines
    return [line.split("] ", 1)[1].split(": ", 1)[1] for line in lines]


# ---- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (RedisConnectionError, OSError):
        await client.aclose()
        pytest.fail(f"no Redis at {REDIS_URL}: .ci/run starts it; start it by hand outside CI")
    yield client
    await client.aclose()


@pytest.fixture
async def redis_prefix(redis_client: aioredis.Redis) -> AsyncIterator[str]:
    prefix = f"xz_test_{uuid.uuid4().hex[:12]}"
    yield prefix
    keys = [k async for k in redis_client.scan_iter(match=f"{prefix}:*", count=500)]
    if keys:
        await redis_client.delete(*keys)


@pytest.fixture
def redis_memory(redis_client: aioredis.Redis, redis_prefix: str) -> RedisMemory:
    return RedisMemory(redis_client, key_prefix=redis_prefix)


@pytest.fixture(params=["postgres", "redis"])
def provider(request: pytest.FixtureRequest) -> MemoryProvider:
    if request.param == "postgres":
        return PostgresMemory(request.getfixturevalue("store"))
    return request.getfixturevalue("redis_memory")


# ---- keys and messages (no server) --------------------------------------------------------------


def test_memory_key_splits_at_the_last_colon_so_mac_device_ids_survive() -> None:
    key = MemoryKey.parse("aa:bb:cc:dd:ee:ff:Zx9_-sess")
    assert key == MemoryKey("aa:bb:cc:dd:ee:ff", "Zx9_-sess")
    assert str(key) == "aa:bb:cc:dd:ee:ff:Zx9_-sess"
    assert MemoryKey.parse(str(key)) == key
    assert as_key("dev:s") == MemoryKey("dev", "s") and as_key(key) is key


@pytest.mark.parametrize("bad", ["no-colon", ":session", "aa:bb:", "", ":"])
def test_memory_key_without_both_parts_is_refused(bad: str) -> None:
    with pytest.raises(InvalidInput, match="memory key"):
        MemoryKey.parse(bad)


def test_memory_key_session_part_cannot_hold_a_colon() -> None:
    with pytest.raises(InvalidInput, match="contains ':'"):
        MemoryKey("dev", "a:b")


def test_eino_shape_omits_empty_fields_and_reads_go_extras() -> None:
    assert user("hi").to_eino() == {"role": "user", "content": "hi"}
    assert MemoryMessage("assistant", "", tool_calls=[]).to_eino() == {"role": "assistant", "content": ""}
    tool = MemoryMessage("tool", "{}", tool_call_id="c1", name="light").to_eino()
    assert list(tool) == ["role", "content", "name", "tool_call_id"]
    go = {"role": "assistant", "content": "ok", "reasoning_content": "…", "tool_calls": TOOL_CALLS, "extra": {}}
    back = MemoryMessage.from_eino(go)
    assert back.tool_calls == TOOL_CALLS and back.tool_call_id is None and back.name is None
    with pytest.raises(InvalidInput):
        MemoryMessage.from_eino({"content": "no role"})


def test_memory_terms_keep_wildcards_and_drop_filler() -> None:
    assert memory_terms("What is the name of the restaurant I told you about?") == ["restaurant", "name"]
    assert memory_terms("我叫小明，你记得吗？") == ["我叫小明", "你记得吗"]
    assert memory_terms("50%_off a_b") == ["50%_off", "a_b"]
    assert memory_terms("ok, hi!") == []


# ---- the contract, for every provider that remembers ---------------------------------------------


async def test_messages_come_back_oldest_to_newest_with_tool_calls(provider: MemoryProvider) -> None:
    said = [
        user("打开客厅的灯"),
        assistant("", tool_calls=TOOL_CALLS),
        MemoryMessage("tool", '{"ok":true}', tool_call_id="c1", name="light"),
        assistant("好的，灯已打开", multi_content=[{"type": "text", "text": "好的，灯已打开"}]),
    ]
    await provider.add_messages(KEY, said)
    got = await provider.get_messages(KEY, 10)
    assert [(m.role, m.content) for m in got] == [(m.role, m.content) for m in said]
    assert got[1].tool_calls == TOOL_CALLS
    assert (got[2].tool_call_id, got[2].name) == ("c1", "light")
    assert got[3].multi_content == [{"type": "text", "text": "好的，灯已打开"}]
    assert all(m.created_at is not None and m.created_at.tzinfo is not None for m in got)
    assert [m.content for m in await provider.get_messages(KEY, 2)] == ['{"ok":true}', "好的，灯已打开"]
    assert await provider.get_messages(KEY, 0) == []


async def test_string_keys_and_single_adds_work_like_batches(provider: MemoryProvider) -> None:
    await provider.add_message(str(KEY), user("one"))
    await provider.add_message(KEY, assistant("two"))
    assert [m.content for m in await provider.get_messages(str(KEY), 5)] == ["one", "two"]


async def test_identical_messages_are_both_kept_in_order(provider: MemoryProvider) -> None:
    await provider.add_messages(KEY, [user("ok"), user("ok"), assistant("fine")])
    await provider.add_message(KEY, user("ok"))
    assert [m.content for m in await provider.get_messages(KEY, 10)] == ["ok", "ok", "fine", "ok"]


async def test_search_finds_any_distinctive_term_newest_first(provider: MemoryProvider) -> None:
    await provider.add_messages(
        KEY, [user("My dog is called Rex"), user("I like green tea"), assistant("Noted: REX likes the park")]
    )
    later = MemoryKey(DEVICE, "s2")  # another connection of the same device remembers it
    lines = await provider.search(later, "What does rex like?", top_k=10)
    assert line_contents(lines) == ["Noted: REX likes the park", "I like green tea", "My dog is called Rex"]
    assert lines[0].split("] ")[1].startswith("assistant: ")
    assert line_contents(await provider.search(later, "rex", top_k=1)) == ["Noted: REX likes the park"]
    assert await provider.search(MemoryKey("other-device", "s1"), "rex") == []
    assert await provider.search(later, "rex", top_k=0) == []


async def test_search_treats_percent_and_underscore_literally(provider: MemoryProvider) -> None:
    # The reference's unescaped ILIKE '%50%_off%' also matched "500 off" and "50% off", and "%%%" matched all.
    await provider.add_messages(KEY, [user("500 off today"), user("50% off today"), user("code 50%_off works")])
    assert line_contents(await provider.search(KEY, "50%_off")) == ["code 50%_off works"]
    assert await provider.search(KEY, "%%%") == []
    assert await provider.search(KEY, "___") == []


async def test_search_does_not_return_the_utterance_it_answers(provider: MemoryProvider) -> None:
    await provider.add_messages(KEY, [user("my locker code is 4711"), user("what is my locker code")])
    assert line_contents(await provider.search(KEY, "what is my locker code")) == ["my locker code is 4711"]


async def test_reset_forgets_the_device_context(provider: MemoryProvider) -> None:
    await provider.add_messages(KEY, [user("My dog is called Rex"), assistant("Nice name")])
    await provider.reset(KEY)
    later = MemoryKey(DEVICE, "s2")
    assert await provider.get_messages(KEY, 10) == []
    assert await provider.get_messages(later, 10) == []
    assert await provider.get_context(later) == ""
    assert await provider.search(later, "Rex") == []
    await provider.add_message(KEY, user("Rex has a new collar"))
    assert line_contents(await provider.search(later, "Rex")) == ["Rex has a new collar"]
    await provider.flush(KEY)
    await provider.close()


async def test_nomemo_stores_nothing() -> None:
    memory = NoMemory()
    await memory.add_messages(KEY, [user("hello")])
    await memory.add_message(str(KEY), user("hello"))
    assert await memory.get_messages(KEY, 10) == []
    assert await memory.get_context(KEY) == ""
    assert await memory.search(KEY, "hello") == []
    await memory.flush(KEY)
    await memory.reset(KEY)
    await memory.close()
    with pytest.raises(InvalidInput):
        await memory.get_messages("no-colon", 1)


# ---- postgres ---------------------------------------------------------------------------------


async def test_postgres_context_is_per_session_and_summarises_the_previous_one(store: ConversationStore) -> None:
    memory = PostgresMemory(store)
    await memory.add_messages(KEY, [user("我叫小明"), assistant("你好，小明！"), MemoryMessage("tool", "{}")])
    later = MemoryKey(DEVICE, "s2")
    assert await memory.get_messages(later, 10) == []
    summary = await memory.get_context(later, max_tokens=500)
    assert summary.startswith("Previous conversation (") and "\n" not in summary
    assert "user: 我叫小明" in summary and "assistant: 你好，小明！" in summary and "tool" not in summary
    assert len(await memory.get_context(later, max_tokens=60)) <= 60
    assert await memory.get_context(KEY) == "", "the current session has messages: get_messages carries them"
    await memory.add_message(later, user("今天天气怎么样"))
    assert await memory.get_context(later) == ""


async def test_postgres_search_window_and_name_round_trip(store: ConversationStore) -> None:
    memory = PostgresMemory(store, search_days=180)
    old = datetime.now(UTC) - timedelta(days=400)
    await memory.add_message(KEY, user("the wifi password is tulip", created_at=old))
    await memory.add_message(KEY, MemoryMessage("tool", "tulip ok", tool_call_id="c9", name="wifi"))
    assert line_contents(await memory.search(KEY, "tulip")) == ["tulip ok"]
    assert len(await memory.search(KEY, "tulip", time_range_days=0)) == 2
    assert len(await memory.search(KEY, "tulip", time_range_days=500)) == 2
    assert (await memory.get_messages(KEY, 1))[0].name == "wifi"


async def test_postgres_reset_keeps_history_for_staff(store: ConversationStore) -> None:
    memory = PostgresMemory(store)
    await memory.add_messages(MemoryKey(DEVICE, "s0"), [user("older session about Rex")])
    await memory.add_messages(KEY, [user("Rex again")])
    await memory.reset(KEY)
    assert await memory.search(KEY, "Rex") == []
    assert await memory.get_context(MemoryKey(DEVICE, "s9")) == ""
    assert [m.content for m in await store.timeline("s0")] == ["older session about Rex"]
    assert (await store.get_session("s1")).status == "reset"


# ---- redis ------------------------------------------------------------------------------------


async def test_redis_writes_the_go_layout(redis_client: aioredis.Redis, redis_prefix: str) -> None:
    memory = RedisMemory(redis_client, key_prefix=redis_prefix + ":")  # a trailing colon is not doubled
    said = [user("打开灯"), assistant("", tool_calls=TOOL_CALLS), MemoryMessage("tool", "ok", tool_call_id="c1")]
    before = time.time_ns()
    await memory.add_messages(KEY, said)
    after = time.time_ns()
    zkey = f"{redis_prefix}:llm:{DEVICE}"
    assert [k.decode() async for k in redis_client.scan_iter(match=f"{redis_prefix}*")] == [zkey]
    assert await redis_client.type(zkey) == b"zset"
    rows = await redis_client.zrange(zkey, 0, -1, withscores=True)
    scores = [score for _, score in rows]
    assert scores == sorted(scores) and len(set(scores)) == 3
    assert before - 1e3 <= scores[0] and scores[-1] <= after + 1e4, "the score is the insert time in Unix ns"
    assert [json.loads(member) for member, _ in rows] == [m.to_eino() for m in said]
    assert "timestamp" not in json.loads(rows[0][0])
    assert RedisMemory(redis_client, key_prefix=redis_prefix).dialogue_key(DEVICE) == zkey


async def test_redis_is_keyed_by_device_across_sessions(redis_memory: RedisMemory) -> None:
    await redis_memory.add_message(KEY, user("before the reconnect"))
    assert [m.content for m in await redis_memory.get_messages(MemoryKey(DEVICE, "reconnected"), 5)] == [
        "before the reconnect"
    ]
    assert await redis_memory.get_messages(MemoryKey("aa:bb:cc:dd:ee:02", "s1"), 5) == []


async def test_redis_reads_a_zset_written_by_the_go_server(redis_client: aioredis.Redis, redis_prefix: str) -> None:
    zkey = f"{redis_prefix}:llm:{DEVICE}"
    now = time.time_ns()
    day = 86_400 * 10**9
    await redis_client.zadd(
        zkey,
        {
            # Go's encoding/json escapes < > & and writes fields this shape does not model.
            '{"role":"user","content":"turn on the \\u003clamp\\u003e","reasoning_content":""}': now - 3000,
            '{"role":"assistant","content":"","tool_calls":[{"id":"c1","type":"function",'
            '"function":{"name":"lamp","arguments":"{}"}}]}': now - 2000,
            '{"role":"tool","content":"lamp on","tool_call_id":"c1"}': now - 1000,
            '{"role":"user","content":"an old lamp story"}': now - 400 * day,
            "not json at all": now - 500,
        },
    )
    memory = RedisMemory(redis_client, key_prefix=redis_prefix, search_days=180)
    got = await memory.get_messages(KEY, 4)
    assert [m.content for m in got] == ["an old lamp story", "turn on the <lamp>", "", "lamp on"]
    assert got[2].tool_calls == [{"id": "c1", "type": "function", "function": {"name": "lamp", "arguments": "{}"}}]
    assert got[3].tool_call_id == "c1"
    assert abs(got[1].created_at.timestamp() * 1e9 - (now - 3000)) < 1e4
    assert line_contents(await memory.search(KEY, "lamp")) == ["lamp on", "turn on the <lamp>"]
    assert len(await memory.search(KEY, "lamp", time_range_days=0)) == 3
    await memory.add_message(KEY, user("new"))
    assert (await memory.get_messages(KEY, 1))[0].content == "new", "new scores go after the Go server's"


async def test_redis_trims_to_max_messages(redis_client: aioredis.Redis, redis_prefix: str) -> None:
    memory = RedisMemory(redis_client, key_prefix=redis_prefix, max_messages=5)
    await memory.add_messages(KEY, [user(f"m{i}") for i in range(6)])
    await memory.add_messages(KEY, [user("m6"), user("m7")])
    assert await redis_client.zcard(memory.dialogue_key(DEVICE)) == 5
    assert [m.content for m in await memory.get_messages(KEY, 10)] == ["m3", "m4", "m5", "m6", "m7"]


async def test_redis_system_prompt_survives_reset(redis_memory: RedisMemory, redis_client: aioredis.Redis) -> None:
    assert await redis_memory.get_system_prompt(DEVICE) is None
    await redis_memory.set_system_prompt(KEY, "你是小智")
    assert await redis_client.get(f"{redis_memory.prefix}llm:system:{DEVICE}") == "你是小智".encode()
    await redis_memory.add_message(KEY, user("hello"))
    await redis_memory.reset(KEY)
    assert await redis_memory.get_system_prompt(DEVICE) == "你是小智"
    assert await redis_memory.get_messages(KEY, 5) == []


async def test_redis_takes_event_bus_messages_and_refuses_a_foreign_key_type(
    redis_memory: RedisMemory, redis_client: aioredis.Redis
) -> None:
    assert redis_memory.keeps_own_copy
    await redis_memory.add_new_messages(
        [NewMessage("s1", DEVICE, "user", "from the bus"), NewMessage("s2", DEVICE, "assistant", "reply")]
    )
    assert [m.content for m in await redis_memory.get_messages(KEY, 5)] == ["from the bus", "reply"]
    await redis_client.rpush(redis_memory.dialogue_key("legacy-list-device"), "x")
    with pytest.raises(StorageError, match="not a sorted set"):
        await redis_memory.get_messages("legacy-list-device:s", 5)


# ---- factory and the configs row (S10) ----------------------------------------------------------


async def add_config(
    pool: asyncpg.Pool,
    provider: str,
    json_data: dict | None = None,
    *,
    enabled: bool = True,
    is_default: bool = True,
) -> int:
    return await pool.fetchval(
        """INSERT INTO configs (type, name, config_id, provider, json_data, enabled, is_default)
           VALUES ('memory', 'Memory', $1, $2, $3::jsonb, $4, $5) RETURNING id""",
        f"mem-{uuid.uuid4().hex[:8]}",
        provider,
        json_data or {},
        enabled,
        is_default,
    )


async def test_default_settings_without_a_row_give_postgres(store: ConversationStore, pool: asyncpg.Pool) -> None:
    await add_config(pool, "nomemo", enabled=False)
    await add_config(pool, "nomemo", is_default=False)
    memory = await memory_from_settings(Settings(), store=store)
    assert isinstance(memory, PostgresMemory) and memory.search_days == 180


async def test_configs_row_selects_the_provider_unless_the_file_set_one(
    store: ConversationStore, pool: asyncpg.Pool, tmp_path
) -> None:
    await add_config(pool, "NoMemo")
    assert isinstance(await memory_from_settings(Settings(), store=store), NoMemory)
    explicit = Settings(memory=MemorySettings(provider="postgres"))
    assert isinstance(await memory_from_settings(explicit, store=store), PostgresMemory)
    (tmp_path / "config.yaml").write_text("memory:\n  provider: postgres\n", encoding="utf-8")
    from_file = load_settings(tmp_path / "config.yaml", env={})
    assert isinstance(await memory_from_settings(from_file, store=store), PostgresMemory)


async def test_configs_row_redis_uses_its_connection_keys(
    store: ConversationStore, pool: asyncpg.Pool, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    url = redis_client.connection_pool.connection_kwargs
    # The manager stores numbers as strings ("port": "6379"); they are accepted.
    await add_config(pool, "redis", {"host": url["host"], "port": str(url["port"]), "key_prefix": redis_prefix})
    memory = await memory_from_settings(Settings(), store=store)
    assert isinstance(memory, RedisMemory) and memory.owns_client
    await memory.add_message(KEY, user("via the configs row"))
    await memory.close()
    assert await redis_client.zcard(f"{redis_prefix}:llm:{DEVICE}") == 1


async def test_configs_row_redis_without_connection_uses_the_given_client(
    store: ConversationStore, pool: asyncpg.Pool, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    row = await add_config(pool, "redis", {"key_prefix": redis_prefix})
    with pytest.raises(ConfigError, match=rf"configs row id={row} .*needs a Redis connection"):
        await memory_from_settings(Settings(), store=store)
    memory = await memory_from_settings(Settings(), store=store, redis_client=redis_client)
    assert isinstance(memory, RedisMemory) and not memory.owns_client and memory.prefix == f"{redis_prefix}:"


async def test_unknown_or_broken_configs_row_is_a_config_error_naming_it(
    store: ConversationStore, pool: asyncpg.Pool
) -> None:
    row = await add_config(pool, "mem0")
    with pytest.raises(ConfigError, match=rf"configs row id={row} .*'mem0'.*allowed: postgres, redis, nomemo"):
        await memory_from_settings(Settings(), store=store)
    await pool.execute("UPDATE configs SET provider = 'redis', json_data = $2::jsonb WHERE id = $1", row, {"port": "x"})
    with pytest.raises(ConfigError, match=rf"configs row id={row} .*port"):
        await memory_from_settings(Settings(), store=store)
    await pool.execute("UPDATE configs SET json_data = $2::jsonb WHERE id = $1", row, {"host": "127.0.0.1", "port": 1})
    with pytest.raises(StorageUnavailable, match=rf"configs row id={row}.*127.0.0.1:1"):
        await memory_from_settings(Settings(), store=store)


async def test_missing_store_or_redis_connection_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'postgres' needs the PostgreSQL conversation store"):
        await memory_from_settings(Settings(), store=None)
    with pytest.raises(ConfigError, match=r"memory\.provider: memory provider 'redis' needs a Redis connection"):
        await memory_from_settings(Settings(memory=MemorySettings(provider="redis")), store=None)
    assert isinstance(
        await memory_from_settings(Settings(memory=MemorySettings(provider="nomemo")), store=None), NoMemory
    )


async def test_redis_from_the_config_file(redis_client: aioredis.Redis, redis_prefix: str) -> None:
    kwargs = redis_client.connection_pool.connection_kwargs
    redis_settings = RedisSettings(host=kwargs["host"], port=kwargs["port"], key_prefix=redis_prefix)
    settings = Settings(memory=MemorySettings(provider="redis", search_days=7), redis=redis_settings)
    memory = await memory_from_settings(settings, store=None)
    assert isinstance(memory, RedisMemory) and memory.search_days == 7 and memory.owns_client
    await memory.add_message(KEY, user("configured by file"))
    await memory.close()
    client = redis_client_from_settings(redis_settings)
    try:
        assert await client.zcard(f"{redis_prefix}:llm:{DEVICE}") == 1
    finally:
        await client.aclose()
