"""A short, realistic conversation stored through the real path (event bus → PostgreSQL + S3).

Used by ``make run`` / ``xiaozhi demo`` so a fresh install has something to browse and play.
The audio is a synthetic voice-like signal encoded to opus the way a device does (16 kHz, 60 ms).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import numpy as np
import opuslib_next

from server.events.types import AddMessage, SaveAudio, SessionEnd
from server.runtime import StorageRuntime
from server.storage.models import NewMessage

DEMO_DEVICE = "02:00:00:de:e0:01"


def synthetic_voice(seconds: float, rate: int = 16000, pitch: float = 150.0, seed: int = 0) -> list[bytes]:
    """Opus packets (60 ms) of a voiced, syllable-like signal — enough to see a waveform and hear a voice shape."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    f0 = pitch + 25 * np.sin(2 * np.pi * 2.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 9))
    syllables = np.clip(np.sin(2 * np.pi * 3.5 * t), 0, None) ** 0.6
    pcm = np.clip((voiced * syllables + 0.02 * rng.standard_normal(t.size)) * 7000, -32768, 32767).astype(np.int16)
    encoder = opuslib_next.Encoder(rate, 1, opuslib_next.APPLICATION_VOIP)
    n = rate * 60 // 1000
    return [encoder.encode(pcm[i : i + n].tobytes(), n) for i in range(0, len(pcm) - n + 1, n)]


async def store_demo_conversation(rt: StorageRuntime) -> list[str]:
    assert rt.bus is not None and rt.store is not None
    session = f"demo-{uuid.uuid4().hex[:12]}"
    await rt.store.start_session(session, DEMO_DEVICE, agent_id="demo-agent", metadata={"source": "xiaozhi demo"})
    await rt.store.set_system_prompt(
        DEMO_DEVICE, "你是小智，一个友好的语音助手。Answer briefly.", agent_id="demo-agent"
    )
    turns: list[tuple[NewMessage, list[bytes] | None, int]] = []

    def say(role: str, content: str, audio_s: float = 0.0, rate: int = 16000, **extra: object) -> str:
        message = NewMessage(session, DEMO_DEVICE, role, content, **extra)  # type: ignore[arg-type]
        packets = synthetic_voice(audio_s, rate, 150 if role == "user" else 210, len(turns)) if audio_s else None
        turns.append((message, packets, rate))
        return message.message_id

    say("user", "今天北京天气怎么样？", 1.8)
    call = {"id": "call-1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"北京"}'}}
    say("assistant", "", tool_calls=[call])
    say("tool", '{"city":"北京","weather":"晴","temp_c":6}', tool_call_id="call-1")
    say("assistant", "北京今天晴，气温六度，出门记得穿外套。", 2.6, 24000)
    say("user", "Set the volume to 30 please.", 1.5)
    vol = {
        "id": "call-2",
        "type": "function",
        "function": {"name": "self.audio_speaker.set_volume", "arguments": '{"volume":30}'},
    }
    say("assistant", "", tool_calls=[vol])
    say("tool", '{"success":true}', tool_call_id="call-2")
    say("assistant", "Done — the volume is now 30.", 1.6, 24000)

    for message, packets, rate in turns:
        rt.bus.publish(AddMessage(message))
        if packets:
            source = "user" if message.role == "user" else "tts"
            rt.bus.publish(
                SaveAudio(
                    session,
                    DEMO_DEVICE,
                    source,
                    tuple(packets),
                    rate,
                    message_id=message.message_id,
                    transcription=message.content,
                )
            )
    rt.bus.publish(SessionEnd(session, DEMO_DEVICE))
    await rt.bus.drain()
    await rt.bus.replay_once()
    await asyncio.sleep(0)

    info = await rt.store.get_session(session)
    lines = [
        f"stored demo session {session}: {info.message_count} messages, {info.audio_count} audio files, "
        f"status {info.status}",
        f"  show it:  xiaozhi sessions show {session}",
    ]
    if rt.audio is not None and info.audio_count:
        first = (await rt.store.list_audio_files(session_id=session))[0]
        url = await rt.audio.presigned_url(first.file_id, timedelta(hours=1))
        lines.append(f"  play the first recording (valid 1 h): {url}")
    if rt.bus.stats.spooled:
        lines.append(f"  note: {rt.bus.stats.spooled} events were spooled to {rt.settings.spool_dir} (backend down?)")
    return lines
