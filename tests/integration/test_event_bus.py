from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.config import DatabaseSettings
from server.events.bus import EventBus
from server.events.handlers import StorageHandlers
from server.events.types import AddMessage, SaveAudio, SessionEnd, SessionStart
from server.storage.audio_store import AudioStore
from server.storage.conversation_store import ConversationStore
from server.storage.db import create_pool
from server.storage.errors import InvalidInput
from server.storage.models import NewMessage
from tests.conftest import minio_settings
from tests.support.audio import encode_opus
from tests.support.proxy import FaultProxy
from tests.support.waiting import wait_until

FAST = dict(retries=1, retry_backoff_s=0.01, replay_interval_s=0.05)


def add(session: str, i: int, device: str = "dev") -> AddMessage:
    return AddMessage(NewMessage(session, device, "user", f"{session}#{i}", message_id=f"{session}-{i}"))


async def contents(store: ConversationStore, session: str) -> list[str]:
    return [m.content for m in await store.timeline(session)]


@pytest.fixture
async def bus(store: ConversationStore, tmp_path: Path) -> AsyncIterator[EventBus]:
    bus = EventBus(StorageHandlers(store), tmp_path / "spool", shards=3, **FAST)  # type: ignore[arg-type]
    await bus.start()
    yield bus
    await bus.close(timeout=10)


async def test_each_sessions_events_are_written_in_publish_order(bus: EventBus, store: ConversationStore) -> None:
    for i in range(40):
        for s in range(25):
            bus.publish(add(f"s{s}", i))
    bus.publish(SessionEnd("s3", "dev"))
    await bus.drain()
    for s in range(25):
        assert await contents(store, f"s{s}") == [f"s{s}#{i}" for i in range(40)]
    assert (await store.get_session("s3")).status == "ended"
    assert bus.stats.written == 1001 and bus.stats.spooled == 0


async def test_session_start_comes_first_and_survives_the_spool(store: ConversationStore, tmp_path: Path) -> None:
    bus = EventBus(StorageHandlers(store), tmp_path / "spool", shards=1, queue_size=2, **FAST)  # type: ignore[arg-type]
    await bus.start()
    try:
        bus.publish(SessionStart("s", "dev", agent_id="agent-1", metadata={"client_id": "c-1"}))
        for i in range(6):  # overflows the tiny queue: the rest goes through the spool
            bus.publish(add("s", i))
        await bus.drain()
        await bus.replay_once()
        info = await store.get_session("s")
        assert info.agent_id == "agent-1" and info.metadata == {"client_id": "c-1"} and info.message_count == 6
    finally:
        await bus.close(timeout=10)


async def test_invalid_event_is_refused_at_publish(bus: EventBus) -> None:
    with pytest.raises(InvalidInput, match="role"):
        bus.publish(AddMessage(NewMessage("s", "dev", "robot", "x")))  # type: ignore[arg-type]


async def test_full_queue_spools_instead_of_dropping_and_order_survives(
    store: ConversationStore, tmp_path: Path
) -> None:
    bus = EventBus(StorageHandlers(store), tmp_path / "spool", shards=1, queue_size=5, **FAST)  # type: ignore[arg-type]
    await bus.start()
    try:
        for i in range(60):
            bus.publish(add("busy", i))
        assert bus.stats.spooled > 0
        await bus.drain()
        await bus.replay_once()
        assert await contents(store, "busy") == [f"busy#{i}" for i in range(60)]
        assert len(bus.spool) == 0 and bus.stats.lost == 0
    finally:
        await bus.close(timeout=10)


async def test_postgres_lost_mid_run_spools_to_disk_and_replays_in_order(
    db: DatabaseSettings, store: ConversationStore, tmp_path: Path
) -> None:
    proxy = await FaultProxy(db.host, db.port).start()
    pool = await create_pool(db.model_copy(update={"port": proxy.port}), min_size=1)
    via_proxy = ConversationStore(pool)
    bus = EventBus(StorageHandlers(via_proxy), tmp_path / "spool", shards=2, **FAST)  # type: ignore[arg-type]
    await bus.start()
    try:
        for i in range(5):
            bus.publish(add("s", i))
        await bus.drain()
        await proxy.cut()
        for i in range(5, 15):
            bus.publish(add("s", i))
        bus.publish(SessionEnd("s", "dev"))
        await bus.drain()
        assert bus.stats.spooled == 11 and len(bus.spool) > 0
        assert await contents(store, "s") == [f"s#{i}" for i in range(5)], "nothing written while down"
        # still down: later events of the session join the spool behind the earlier ones
        bus.publish(add("s", 15))
        await proxy.restore()
        await wait_until(lambda: not len(bus.spool))
        assert await contents(store, "s") == [f"s#{i}" for i in range(16)]
        assert (await store.get_session("s")).status == "ended"
        assert bus.stats.lost == 0 and bus.stats.dead == 0
    finally:
        await bus.close(timeout=10)
        await pool.close()
        await proxy.close()


async def test_spool_left_by_a_stopped_server_is_replayed_at_next_start(
    db: DatabaseSettings, store: ConversationStore, tmp_path: Path
) -> None:
    proxy = await FaultProxy(db.host, db.port).start()
    pool = await create_pool(db.model_copy(update={"port": proxy.port}), min_size=0)
    await proxy.cut()
    first = EventBus(StorageHandlers(ConversationStore(pool)), tmp_path / "spool", **FAST)  # type: ignore[arg-type]
    await first.start()
    for i in range(3):
        first.publish(add("s", i))
    await first.close(timeout=2)
    await pool.close()
    await proxy.close()
    assert len(list((tmp_path / "spool").glob("*.json"))) >= 1

    second = EventBus(StorageHandlers(store), tmp_path / "spool", **FAST)  # type: ignore[arg-type]
    second.publish(add("s", 3))  # published before start: must still come after the spooled ones
    await second.start()
    try:
        await second.drain()
        await second.replay_once()
        assert await contents(store, "s") == [f"s#{i}" for i in range(4)]
    finally:
        await second.close(timeout=5)


async def test_unstorable_message_is_refused_at_publish(bus: EventBus) -> None:
    with pytest.raises(InvalidInput, match="JSON"):
        bus.publish(AddMessage(NewMessage("s", "dev", "assistant", "", tool_calls=[{"x": {1, 2}}])))
    with pytest.raises(InvalidInput, match="Unicode"):
        bus.publish(AddMessage(NewMessage("s", "dev", "user", "broken \ud800 text")))


async def test_unwritable_event_goes_to_dead_letters_with_the_reason_and_others_go_on(
    s3_endpoint: str, store: ConversationStore, tmp_path: Path
) -> None:
    audio = AudioStore(minio_settings(s3_endpoint), store)
    await audio.start()
    bus = EventBus(StorageHandlers(store, audio), tmp_path / "spool", **FAST)  # type: ignore[arg-type]
    await bus.start()
    try:
        bus.publish(add("s", 0))
        bus.publish(SaveAudio("s", "dev", "user", (b"\xff\x00garbage",), 16000, message_id="s-0"))
        bus.publish(add("s", 1))
        await bus.drain()
        assert await contents(store, "s") == ["s#0", "s#1"]
        dead = bus.spool.dead_letters()
        assert len(dead) == 1 and "invalid opus" in json.loads(dead[0].read_text())["reason"]
        assert json.loads(dead[0].read_text())["event"]["message_id"] == "s-0", "the audio is kept, not lost"
    finally:
        await bus.close(timeout=10)
        audio.close()


async def test_corrupt_spool_file_is_set_aside_not_lost(bus: EventBus) -> None:
    (bus.spool.directory / "00000000000000000001.json").write_text("{not json")
    await bus.replay_once()
    assert len(bus.spool) == 0
    assert "not json" in json.loads(bus.spool.dead_letters()[0].read_text())["raw"]


async def test_shutdown_drains_everything_queued(store: ConversationStore, tmp_path: Path) -> None:
    bus = EventBus(StorageHandlers(store), tmp_path / "spool", **FAST)  # type: ignore[arg-type]
    await bus.start()
    for i in range(300):
        bus.publish(add(f"s{i % 7}", i))
    await bus.close(timeout=20)
    assert await store.pool.fetchval("SELECT count(*) FROM conversation_messages") == 300
    bus.publish(add("late", 0))
    assert len(bus.spool) == 1, "after close, events are kept on disk for the next start"


async def test_audio_is_saved_after_its_message_and_s3_outage_is_spooled(
    s3_endpoint: str, store: ConversationStore, tmp_path: Path
) -> None:
    host, port = s3_endpoint.split(":")
    proxy = await FaultProxy(host, int(port)).start()
    settings = minio_settings(f"127.0.0.1:{proxy.port}")
    audio = AudioStore(settings, store)
    await audio.start()
    bus = EventBus(StorageHandlers(store, audio), tmp_path / "spool", **FAST)  # type: ignore[arg-type]
    await bus.start()
    packets = tuple(encode_opus(16000, 60, 1.2))
    try:
        bus.publish(add("s", 0))
        bus.publish(SaveAudio("s", "dev", "user", packets, 16000, message_id="s-0"))
        await bus.drain()
        assert (await store.get_message("s-0")).audio_file_id is not None
        await proxy.cut()
        bus.publish(add("s", 1))
        bus.publish(SaveAudio("s", "dev", "user", packets, 16000, message_id="s-1"))
        await bus.drain()
        assert len(bus.spool) > 0
        await proxy.restore()
        await wait_until(lambda: not len(bus.spool))
        assert (await store.get_message("s-1")).audio_file_id is not None
        assert len(await store.list_audio_files(session_id="s")) == 2
    finally:
        await bus.close(timeout=10)
        audio.close()
        await proxy.close()


async def test_audio_off_without_audio_store_is_logged_once(
    bus: EventBus, store: ConversationStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    for _ in range(3):
        bus.publish(SaveAudio("s", "dev", "user", tuple(encode_opus(16000, 60, 0.12)), 16000))
    await bus.drain()
    assert sum("audio saving is off" in r.message for r in caplog.records) == 1
    assert bus.stats.dead == 0
