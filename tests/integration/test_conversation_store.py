from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from server.storage.conversation_store import ConversationStore, NewAudioFile
from server.storage.errors import InvalidInput, NotFound
from server.storage.models import NewMessage, SessionFilter

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def msg(session: str, role: str = "user", content: str = "hi", device: str = "aa:bb:cc:dd:ee:01", **kw) -> NewMessage:
    return NewMessage(session_id=session, device_id=device, role=role, content=content, **kw)  # type: ignore[arg-type]


async def test_session_lifecycle_active_ended(store: ConversationStore) -> None:
    info = await store.start_session("s1", "aa:bb:cc:dd:ee:01", agent_id="agent-7", metadata={"fw": "1.6"})
    assert info.status == "active" and info.ended_at is None and info.metadata == {"fw": "1.6"}
    assert await store.end_session("s1")
    ended = await store.get_session("s1")
    assert ended.status == "ended" and ended.ended_at is not None and ended.ended_at >= ended.started_at
    assert not await store.end_session("s1"), "ending twice reports that nothing changed"


async def test_starting_a_session_twice_returns_it_and_other_device_is_refused(store: ConversationStore) -> None:
    first = await store.start_session("s1", "dev-a")
    again = await store.start_session("s1", "dev-a")
    assert again.id == first.id
    with pytest.raises(InvalidInput, match="belongs to device"):
        await store.start_session("s1", "dev-b")


async def test_messages_get_consecutive_sequence_numbers_and_counters(store: ConversationStore) -> None:
    results = await store.add_messages(
        [
            msg("s1", "user", "打开灯"),
            msg("s1", "assistant", "", tool_calls=[{"id": "c1", "type": "function", "function": {"name": "light"}}]),
            msg("s1", "tool", '{"ok":true}', tool_call_id="c1"),
            msg("s1", "assistant", "好的，灯已打开"),
        ]
    )
    assert [r.sequence_num for r in results] == [1, 2, 3, 4]
    timeline = await store.timeline("s1")
    assert [m.role for m in timeline] == ["user", "assistant", "tool", "assistant"]
    assert timeline[1].tool_calls == [{"id": "c1", "type": "function", "function": {"name": "light"}}]
    assert timeline[2].tool_call_id == "c1"
    info = await store.get_session("s1")
    assert info.message_count == 4 and info.tool_call_count == 1 and info.has_tool_calls


async def test_adding_is_idempotent_by_message_id(store: ConversationStore) -> None:
    first = await store.add_message(msg("s1", message_id="m-1"))
    again = await store.add_message(msg("s1", message_id="m-1", content="different text"))
    assert first.created and not again.created and again.sequence_num == first.sequence_num
    both = await store.add_messages([msg("s1", message_id="m-2"), msg("s1", message_id="m-2")])
    assert [r.created for r in both] == [True, False]
    assert [m.content for m in await store.timeline("s1")] == ["hi", "hi"]
    assert (await store.get_session("s1")).message_count == 2


async def test_concurrent_writers_to_one_session_never_collide(store: ConversationStore) -> None:
    async def writer(k: int) -> None:
        for i in range(20):
            await store.add_message(msg("shared", content=f"w{k}-{i}"))

    await asyncio.gather(*(writer(k) for k in range(8)))
    seqs = [m.sequence_num for m in await store.timeline("shared")]
    assert seqs == list(range(1, 161))
    per_writer = {}
    for m in await store.timeline("shared"):
        k, i = m.content[1:].split("-")
        per_writer.setdefault(k, []).append(int(i))
    assert all(v == sorted(v) for v in per_writer.values()), "each writer's order is kept"


async def test_last_messages_oldest_to_newest_and_reset_forgets_context(store: ConversationStore) -> None:
    await store.add_messages([msg("s1", content=f"m{i}") for i in range(30)])
    last = await store.last_messages("s1", 5)
    assert [m.content for m in last] == ["m25", "m26", "m27", "m28", "m29"]
    assert await store.reset_session("s1")
    assert await store.last_messages("s1", 5) == []
    assert len(await store.last_messages("s1", 5, context_only=False)) == 5, "history is kept for support staff"
    await store.add_message(msg("s1", content="after reset"))
    assert [m.content for m in await store.last_messages("s1", 5)] == ["after reset"]
    assert (await store.get_session("s1")).status == "reset"


async def test_device_context_comes_from_the_previous_session(store: ConversationStore) -> None:
    await store.start_session("old", "dev", started_at=T0)
    await store.add_messages([msg("old", content=f"o{i}", device="dev") for i in range(4)])
    await store.start_session("new", "dev", started_at=T0 + timedelta(hours=1))
    ctx = await store.device_context("dev", 3, exclude_session="new")
    assert [m.content for m in ctx] == ["o1", "o2", "o3"]


async def test_invalid_messages_are_refused_with_the_reason(store: ConversationStore) -> None:
    with pytest.raises(InvalidInput, match="role"):
        await store.add_message(msg("s1", role="robot"))
    with pytest.raises(InvalidInput, match="session_id"):
        await store.add_message(msg("x" * 65))
    with pytest.raises(InvalidInput, match="NUL"):
        await store.add_message(msg("s1", content="a\x00b"))
    with pytest.raises(NotFound):
        await store.get_session("s1")


async def test_session_list_keyset_pages_and_filters(store: ConversationStore) -> None:
    for i in range(12):
        dev = "dev-a" if i % 2 else "dev-b"
        await store.start_session(f"s{i:02d}", dev, started_at=T0 + timedelta(minutes=i), agent_id="ag")
        await store.add_message(msg(f"s{i:02d}", device=dev, content=f"turn {i}"))
    seen = []
    cursor = None
    while True:
        page = await store.list_sessions(SessionFilter(), limit=5, cursor=cursor)
        seen += [s.session_id for s in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [f"s{i:02d}" for i in range(11, -1, -1)]
    only_a = await store.list_sessions(SessionFilter(device_id="dev-a"), limit=50)
    assert {s.device_id for s in only_a.items} == {"dev-a"} and len(only_a.items) == 6
    window = await store.list_sessions(
        SessionFilter(since=T0 + timedelta(minutes=3), until=T0 + timedelta(minutes=6)), limit=50
    )
    assert [s.session_id for s in window.items] == ["s05", "s04", "s03"]
    await store.end_session("s03")
    ended = await store.list_sessions(SessionFilter(status="ended"))
    assert [s.session_id for s in ended.items] == ["s03"]
    with pytest.raises(InvalidInput, match="cursor"):
        await store.list_sessions(cursor="garbage!")


async def test_session_list_filters_audio_tool_calls_and_text(store: ConversationStore) -> None:
    await store.add_message(msg("plain", content="hello there"))
    await store.add_message(msg("tools", content="", role="assistant", tool_calls=[{"id": "1"}]))
    await store.add_message(msg("audio", content="今天天气怎么样", message_id="mu"))
    await store.add_audio_file(
        NewAudioFile("f1", "audio", "aa:bb:cc:dd:ee:01", "b", "k", "opus", 10, 100, 16000, 1, "user", "mu")
    )
    ids = lambda page: {s.session_id for s in page.items}  # noqa: E731
    assert ids(await store.list_sessions(SessionFilter(has_audio=True))) == {"audio"}
    assert ids(await store.list_sessions(SessionFilter(has_tool_calls=True))) == {"tools"}
    assert ids(await store.list_sessions(SessionFilter(has_tool_calls=False, has_audio=False))) == {"plain"}
    assert ids(await store.list_sessions(SessionFilter(text="天气"))) == {"audio"}
    assert ids(await store.list_sessions(SessionFilter(text="HELLO"))) == {"plain"}


async def test_full_text_search_chinese_english_and_literal_wildcards(store: ConversationStore) -> None:
    await store.add_messages(
        [
            msg("s1", content="今天北京天气怎么样"),
            msg("s1", role="assistant", content="北京今天晴，气温 20 度"),
            msg("s2", content="Set the volume to 30 percent"),
            msg("s2", content="100% sure, use snake_case"),
            msg("s2", content="1000 sure usexcase"),
        ]
    )
    hits = await store.search_messages("北京 天气")
    assert [h.content for h in hits] == ["今天北京天气怎么样"]
    assert hits[0].spans == [(2, 4), (4, 6)] or hits[0].spans == [(2, 6)]
    assert [h.content for h in await store.search_messages("volume")] == ["Set the volume to 30 percent"]
    assert [h.content for h in await store.search_messages("100%")] == ["100% sure, use snake_case"]
    assert [h.content for h in await store.search_messages("e_c")] == ["100% sure, use snake_case"]
    assert [h.session_id for h in await store.search_messages("北京", session_id="s1")] == ["s1", "s1"]
    first = await store.search_messages("北京", limit=1)
    rest = await store.search_messages("北京", limit=5, before_id=first[0].id)
    assert len(first) == 1 and len(rest) == 1 and rest[0].id < first[0].id
    with pytest.raises(InvalidInput):
        await store.search_messages("   ")


async def test_messages_per_day(store: ConversationStore) -> None:
    day = datetime(2026, 11, 2, tzinfo=UTC)
    await store.add_messages(
        [msg("s1", created_at=day + timedelta(hours=h)) for h in (1, 2, 25, 26, 27)]
        + [msg("s2", device="other", created_at=day + timedelta(hours=3))]
    )
    counts = await store.messages_per_day(day, day + timedelta(days=3))
    assert counts == [(day.date(), 3), ((day + timedelta(days=1)).date(), 3)]
    only = await store.messages_per_day(day, day + timedelta(days=3), device_id="other")
    assert only == [(day.date(), 1)]


async def test_system_prompt_get_set(store: ConversationStore) -> None:
    assert await store.get_system_prompt("dev") is None
    await store.set_system_prompt("dev", "你是小智", agent_id="a1")
    await store.set_system_prompt("dev", "You are Xiaozhi")
    assert await store.get_system_prompt("dev") == "You are Xiaozhi"


async def test_audio_row_links_its_message_and_is_idempotent(store: ConversationStore) -> None:
    await store.add_message(msg("s1", message_id="m1"))
    row = NewAudioFile("f1", "s1", "aa:bb:cc:dd:ee:01", "bucket", "key1", "opus", 1234, 2000, 16000, 1, "user", "m1")
    stored = await store.add_audio_file(row)
    again = await store.add_audio_file(row)
    assert stored.file_id == again.file_id == "f1" and stored.message_id == "m1"
    assert (await store.get_message("m1")).audio_file_id == "f1"
    assert (await store.get_session("s1")).audio_count == 1
    assert [a.file_id for a in await store.list_audio_files(session_id="s1")] == ["f1"]
    orphan = NewAudioFile("f2", "s1", "aa:bb:cc:dd:ee:01", "bucket", "key2", "opus", 10, 60, 24000, 1, "tts", "nope")
    assert (await store.add_audio_file(orphan)).message_id is None, "a missing message is not invented"
    assert await store.delete_audio_file_row("f1")
    assert (await store.get_message("m1")).audio_file_id is None
    assert (await store.get_session("s1")).audio_count == 1


async def test_memory_reset_forgets_the_devices_context_but_not_its_history(store: ConversationStore) -> None:
    await store.start_session("old", "dev", started_at=T0)
    await store.add_message(msg("old", device="dev", content="my name is Li"))
    await store.end_session("old")
    await store.start_session("cur", "dev", started_at=T0 + timedelta(hours=1))
    await store.add_message(msg("cur", device="dev", content="remember me?"))
    await store.forget_device_context("dev", "cur")
    assert await store.device_context("dev", 5, exclude_session="next") == []
    assert (await store.get_session("old")).status == "ended", "earlier sessions keep their status"
    assert (await store.get_session("cur")).status == "reset"
    assert len(await store.timeline("old")) == 1, "history stays readable"
    await store.add_message(msg("cur", device="dev", content="new start"))
    assert [m.content for m in await store.device_context("dev", 5, exclude_session="next")] == ["new start"]
