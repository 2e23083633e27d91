"""The simulated device against our real server (offline whisper ASR, local LLM, espeak TTS, real
PostgreSQL): OTA and direct connection, text, spoken and push-to-talk turns, MCP, abort, protocol
versions, and the errors a user sees when something is wrong."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import soundfile

from server.config import DatabaseSettings, EventSettings, ServerSettings, Settings
from server.device.server import DeviceServer
from server.runtime import StorageRuntime
from simulator import (
    AudioPlayed,
    ConversationRecorder,
    DeviceClient,
    DeviceIdentity,
    DeviceMcpServer,
    FileSource,
    SilenceSource,
    SimulatorError,
    ToolCalled,
    activate,
    check_ota,
    load_identity,
    speak_file,
)
from simulator.inputs import UplinkEncoder
from tests.support.waiting import wait_until

SECRET = "s3cret-for-tests"


@pytest.fixture
async def runtime(db: DatabaseSettings, tmp_path: Path) -> AsyncIterator[StorageRuntime]:
    settings = Settings(database=db, data_dir=tmp_path, events=EventSettings(replay_interval_s=0.05))
    async with StorageRuntime(settings) as rt:
        yield rt


async def start_server(runtime: StorageRuntime, **server: object) -> DeviceServer:
    settings = runtime.settings.model_copy(
        update={"server": ServerSettings(host="127.0.0.1", port=0, http_port=0, **server)}  # type: ignore[arg-type]
    )
    srv = DeviceServer(settings, runtime=runtime)
    await srv.start()
    return srv


@pytest.fixture
async def server(runtime: StorageRuntime) -> AsyncIterator[DeviceServer]:
    srv = await start_server(runtime)
    yield srv
    await srv.stop()


@pytest.fixture
def identity(tmp_path: Path) -> DeviceIdentity:
    return load_identity(tmp_path / "simulator")


def espeak_wav(path: Path, text: str) -> Path:
    """A real spoken file as a user would pick one: espeak-ng's own 22.05 kHz WAV (so it gets resampled)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise RuntimeError("espeak-ng is not installed: run `make setup` (it installs packaging/system-packages.txt)")
    subprocess.run([espeak, "-v", "en", "-s", "150", "-w", str(path), text], check=True, timeout=30)
    return path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("version", [1, 2, 3])
async def test_text_turn_is_heard_and_played_without_drops_or_clipped_ending(
    server: DeviceServer, identity: DeviceIdentity, tmp_path: Path, version: int
) -> None:
    recorder = ConversationRecorder(tmp_path / "conversation.wav")
    client = DeviceClient(server.websocket_url(), identity, protocol_version=version, recorder=recorder)
    await client.connect()
    assert client.session_id and client.state == "idle"
    assert client.session_id in server.ctx.connections  # type: ignore[union-attr]
    report = await client.say("hello")
    assert report.stt == "hello"
    assert report.sentences and report.emotion == "happy"
    assert report.frames_received >= 5
    assert report.dropped == 0 and report.clipped == 0, report
    assert report.frames_played == report.frames_received and report.clean
    assert report.first_frame_latency_s is not None and 0 < report.first_frame_latency_s < 5
    assert client.state == "idle", "no listen mode yet: back to idle after the reply"
    assert client.stats.protocol_errors == 0 and client.stats.frames_ignored == 0
    await client.close()
    assert not client.connected
    audio, rate = soundfile.read(recorder.close(), dtype="int16")
    assert rate == 16000 and audio.shape[1] == 2
    assert abs(audio[:, 1]).max() > 1000, "the reply's audio is in the speaker channel"


async def test_ota_check_gives_the_websocket_url_and_a_token_that_connects(
    runtime: StorageRuntime, identity: DeviceIdentity
) -> None:
    srv = await start_server(runtime, auth={"enabled": True, "secret": SECRET})
    try:
        client = await DeviceClient.from_ota(srv.ota_url(), identity)
        assert client.ota is not None and client.url == srv.websocket_url() == client.ota.websocket_url
        assert client.ota.token and client.ota.server_time_ms and client.ota.activation is None
        assert client.ota.firmware_version == "1.6.2"
        assert await activate(srv.ota_url(), identity) == "activated"
        report = await client.say("what time is it")
        assert report.stt == "what time is it" and report.clean
        await client.close()

        with pytest.raises(SimulatorError, match="HTTP 401") as refused:
            await DeviceClient(srv.websocket_url(), identity, token="nope.123").connect()
        assert "unauthorized" in str(refused.value)
        with pytest.raises(SimulatorError, match="HTTP 401"):
            await DeviceClient(srv.websocket_url(), identity).connect()
    finally:
        await srv.stop()


async def test_a_spoken_file_in_auto_mode_is_transcribed_and_listening_resumes(
    server: DeviceServer, identity: DeviceIdentity, tmp_path: Path
) -> None:
    wav = espeak_wav(tmp_path / "question.wav", "what time is it")
    client = DeviceClient(server.websocket_url(), identity)
    await client.connect()
    sent = await speak_file(client, wav, mode="auto", realtime=True)
    report = await client.wait_for_turn(timeout=60)
    assert "time" in (report.stt or "").lower(), report.stt
    assert report.clean, report
    assert sent >= FileSource(wav).duration_s / 0.06
    assert client.state == "listening" and client.listen_mode == "auto", "auto mode continues hands-free"
    await client.close()


async def test_manual_mode_turn_ends_with_listen_stop(
    server: DeviceServer, identity: DeviceIdentity, tmp_path: Path
) -> None:
    wav = espeak_wav(tmp_path / "greeting.wav", "hello there")
    client = DeviceClient(server.websocket_url(), identity, protocol_version=2)
    await client.connect()
    await speak_file(client, wav, mode="manual", realtime=False)
    assert client.state in ("idle", "speaking")
    report = await client.wait_for_turn(timeout=60)
    assert "hello" in (report.stt or "").lower(), report.stt
    assert report.clean and client.state == "idle"
    await client.close()


async def test_the_server_sets_the_volume_through_the_simulators_mcp_tools(
    server: DeviceServer, identity: DeviceIdentity
) -> None:
    # A small page size makes the server follow nextCursor to find the volume tool.
    tools = DeviceMcpServer(max_page_bytes=1200)
    client = DeviceClient(server.websocket_url(), identity, mcp=tools)
    events = client.events()
    await client.connect()
    listed = [t.name for t in tools.tools if t.name != "self.get_system_info"]
    await wait_until(
        lambda: any(len(c.mcp.tools) == len(listed) for c in server.ctx.connections.values())  # type: ignore[union-attr]
    )
    assert tools.initialized and tools.lists_served > 1
    report = await client.say("set the volume to 30")
    assert client.device.volume == 30
    assert [c.name for c in report.tool_calls] == ["self.audio_speaker.set_volume"]
    called = await events.next(ToolCalled, timeout=1)
    assert called.arguments == {"volume": 30} and not called.is_error
    assert report.sentences and "30" in " ".join(report.sentences) and report.clean
    await client.close()


async def test_abort_during_speech_gets_tts_stop_at_once(server: DeviceServer, identity: DeviceIdentity) -> None:
    client = DeviceClient(server.websocket_url(), identity)
    events = client.events()
    await client.send_text("tell me a long story please")
    await events.next(AudioPlayed, timeout=20)
    assert client.state == "speaking"
    await client.abort()
    report = await client.wait_for_turn(timeout=10)
    assert report.aborted and report.ended_by == "tts_stop"
    assert report.abort_to_stop_s is not None and report.abort_to_stop_s < 0.5
    assert client.state == "idle"
    await client.close()


async def test_unreachable_server_and_unreadable_audio_are_clear_errors(
    identity: DeviceIdentity, tmp_path: Path
) -> None:
    port = closed_port()
    with pytest.raises(SimulatorError, match=r"cannot connect to ws://127\.0\.0\.1"):
        await DeviceClient(f"ws://127.0.0.1:{port}/xiaozhi/v1/", identity, open_timeout_s=3).connect()
    with pytest.raises(SimulatorError, match="cannot reach OTA server"):
        await check_ota(f"http://127.0.0.1:{port}/xiaozhi/ota/", identity, timeout_s=3)
    garbage = tmp_path / "noise.wav"
    garbage.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 10)
    with pytest.raises(SimulatorError, match=r"cannot read audio file .*noise\.wav: "):
        FileSource(garbage)
    client = DeviceClient(f"ws://127.0.0.1:{port}/xiaozhi/v1/", identity)
    with pytest.raises(SimulatorError, match="cannot read audio file"):
        await speak_file(client, garbage)
    assert client.state == "idle", "nothing was attempted with a bad file"
    with pytest.raises(SimulatorError, match=r"cannot read audio file .*missing\.wav"):
        FileSource(tmp_path / "missing.wav")


# ---- server faults the simulator found, fixed: push-to-talk offsets, burst delivery, firmware MCP errors ----


async def test_auto_mode_after_push_to_talk_is_still_heard(
    server: DeviceServer, identity: DeviceIdentity, tmp_path: Path
) -> None:
    client = DeviceClient(server.websocket_url(), identity)
    await speak_file(client, espeak_wav(tmp_path / "a.wav", "hello there"), mode="manual", realtime=False)
    await client.wait_for_turn(timeout=60)
    await speak_file(client, espeak_wav(tmp_path / "b.wav", "what time is it"), mode="auto", realtime=True)
    report = await client.wait_for_turn(timeout=15)
    assert "time" in (report.stt or "").lower()
    await client.close()


async def burst_then_trickle(client: DeviceClient, wav: Path) -> None:
    """Auto-mode speech as a device on flaky Wi-Fi delivers it: 1.2 s held up and flushed at once, the
    rest catching up faster than real time."""
    encoder = UplinkEncoder()
    frames = [*FileSource(wav).frames(), *SilenceSource(1200).frames()]
    await client.listen_start("auto")
    for i, frame in enumerate(frames):
        await client.send_opus(encoder.encode(frame))
        await asyncio.sleep(0 if i < 20 else 0.004)
    client.mark_end_of_speech()


async def test_speech_delivered_in_bursts_is_heard_whole(
    server: DeviceServer, identity: DeviceIdentity, tmp_path: Path
) -> None:
    wav = espeak_wav(tmp_path / "q.wav", "what time is it")
    client = DeviceClient(server.websocket_url(), identity)
    for _ in range(3):
        await burst_then_trickle(client, wav)
        report = await client.wait_for_turn(timeout=15)
        assert "what time" in (report.stt or "").lower(), report.stt
    await client.close()


async def test_a_firmware_style_tool_error_fails_the_call_at_once(
    runtime: StorageRuntime, identity: DeviceIdentity
) -> None:
    srv = await start_server(runtime, tool_call_timeout_s=3.0)
    try:
        tools = DeviceMcpServer(error_codes=False)

        def codec_busy(arguments: dict[str, object]) -> bool:
            raise RuntimeError("codec not ready")

        volume = next(t for t in tools.tools if t.name == "self.audio_speaker.set_volume")
        tools.add_tool(volume, codec_busy, replace=True)
        client = DeviceClient(srv.websocket_url(), identity, mcp=tools)
        await client.connect()
        await wait_until(lambda: any(c.mcp.tools for c in srv.ctx.connections.values()))  # type: ignore[union-attr]
        report = await client.say("set the volume to 30")
        assert "device did not answer" not in " ".join(report.sentences), report.sentences
        await client.close()
    finally:
        await srv.stop()


async def test_a_killed_uplink_worker_is_replaced_and_the_device_is_still_heard(
    server: DeviceServer, identity: DeviceIdentity, tmp_path: Path
) -> None:
    wav = espeak_wav(tmp_path / "q.wav", "what time is it")
    client = DeviceClient(server.websocket_url(), identity)
    await client.connect()
    assert server.ctx is not None
    await wait_until(lambda: server.ctx.vad.pid is not None)  # type: ignore[union-attr]
    pid = server.ctx.vad.pid
    assert pid is not None
    # The worker dies while the device is in the middle of speaking.
    encoder = UplinkEncoder()
    await client.listen_start("auto")
    for i, frame in enumerate(FileSource(wav).frames()):
        if i == 10:
            os.kill(pid, signal.SIGKILL)
        await client.send_opus(encoder.encode(frame))
        await asyncio.sleep(0.06)
    await wait_until(lambda: server.ctx.vad.restarts == 1)  # type: ignore[union-attr]
    # The next utterance, from the top, is heard and answered.
    await speak_file(client, wav, mode="auto", realtime=True)
    report = await client.wait_for_turn(timeout=60)
    assert "time" in (report.stt or "").lower(), report.stt
    assert server.ctx.vad.pid not in (None, pid)
    await client.close()


async def test_realtime_mode_keeps_listening_while_speaking_and_speech_barges_in(
    server: DeviceServer, identity: DeviceIdentity, tmp_path: Path
) -> None:
    first = FileSource(espeak_wav(tmp_path / "a.wav", "tell me a long story please"))
    second = FileSource(espeak_wav(tmp_path / "b.wav", "what time is it"))
    client = DeviceClient(server.websocket_url(), identity)
    events = client.events()
    await client.connect()
    encoder = UplinkEncoder()
    await client.listen_start("realtime")
    for frame in first.frames():
        await client.send_opus(encoder.encode(frame))
        await asyncio.sleep(0.06)
    client.mark_end_of_speech()
    for frame in SilenceSource(1000).frames():
        await client.send_opus(encoder.encode(frame))
        await asyncio.sleep(0.06)
    await events.next(AudioPlayed, timeout=30)
    assert client.state == "speaking"
    # The mic stays open while the device speaks: the user talks over the reply.
    sent_while_speaking = 0
    for frame in second.frames():
        sent_while_speaking += await client.send_opus(encoder.encode(frame))
        await asyncio.sleep(0.06)
    assert sent_while_speaking > 0
    client.mark_end_of_speech()
    for frame in SilenceSource(1000).frames():
        await client.send_opus(encoder.encode(frame))
        await asyncio.sleep(0.06)
    [interrupted] = client.turns  # the barge-in ended the reply while the user was still talking
    assert "story" in (interrupted.stt or "").lower(), interrupted.stt
    assert interrupted.ended_by == "tts_stop" and not interrupted.clean, "the reply was cut short by the barge-in"
    answered = await client.wait_for_turn(timeout=60)
    assert "what time" in (answered.stt or "").lower(), answered.stt
    assert client.listen_mode == "realtime"
    await client.close()
