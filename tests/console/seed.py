"""Test conversations stored through the real stores (PostgreSQL rows, S3 objects)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from server.demo import synthetic_voice
from server.storage.audio_store import AudioStore
from server.storage.conversation_store import ConversationStore
from server.storage.models import NewMessage

BASE = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


async def seed_sessions(store: ConversationStore, n: int, device: str = "aa:bb:cc:00:00:01") -> list[str]:
    """``n`` small sessions, one minute apart (newest last), alternating Chinese and English text."""
    ids = []
    for i in range(n):
        sid = f"s-{i:05d}"
        at = BASE + timedelta(minutes=i)
        await store.start_session(sid, device if i % 2 else "aa:bb:cc:00:00:02", agent_id="agent-1", started_at=at)
        text = f"今天天气怎么样 {i}" if i % 2 else f"hello weather number {i}"
        await store.add_messages([
            NewMessage(sid, "x", "user", text, created_at=at),
            NewMessage(sid, "x", "assistant", f"answer {i}", created_at=at + timedelta(seconds=2)),
        ])  # fmt: skip
        ids.append(sid)
    return ids


async def seed_rich_session(store: ConversationStore, audio: AudioStore, sid: str = "rich-1") -> dict[str, str]:
    """A session with a tool call + result, an idle gap, a multimodal part and two recordings."""
    dev = "aa:bb:cc:00:00:09"
    await store.start_session(sid, dev, agent_id="agent-9", started_at=BASE)
    await store.set_system_prompt(dev, "你是小智。Be brief.")
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"北京"}'}}
    msgs = [
        NewMessage(sid, dev, "user", "北京天气怎么样？", created_at=BASE),
        NewMessage(sid, dev, "assistant", "", tool_calls=[call], created_at=BASE + timedelta(seconds=1)),
        NewMessage(sid, dev, "tool", '{"weather":"晴","temp_c":6,' + '"x":"' + "y" * 300 + '"}', tool_call_id="c1",
                   created_at=BASE + timedelta(seconds=2)),
        NewMessage(sid, dev, "assistant", "北京今天晴。", created_at=BASE + timedelta(seconds=3)),
        NewMessage(sid, dev, "user", "Look at this picture", created_at=BASE + timedelta(minutes=10),
                   multi_content=[{"type": "text", "text": "Look"}, {"type": "image_url",
                                                                      "image_url": {"url": "http://x/cat.png"}}]),
    ]  # fmt: skip
    await store.add_messages(msgs)
    await audio.save_opus_packets(session_id=sid, device_id=dev, source="user", packets=synthetic_voice(1.2),
                                  sample_rate=16000, message_id=msgs[0].message_id, created_at=BASE)  # fmt: skip
    await audio.save_opus_packets(session_id=sid, device_id=dev, source="tts",
                                  packets=synthetic_voice(1.5, 24000, 210, 1), sample_rate=24000,
                                  message_id=msgs[3].message_id, created_at=BASE + timedelta(seconds=3))  # fmt: skip
    return {"user": msgs[0].message_id, "answer": msgs[3].message_id, "picture": msgs[4].message_id}
