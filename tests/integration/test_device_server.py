"""The device server end to end: a scripted device over a real socket ↔ server ↔ real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from server.audio.decoder import OpusDecoder
from server.config import DatabaseSettings, EventSettings, PipelineSettings, ServerSettings, Settings
from server.device.server import DeviceServer
from server.live.feed import LiveEvent
from server.pipeline.tts import EspeakTts
from server.protocol.auth import make_token
from server.runtime import StorageRuntime
from server.storage.conversation_store import ConversationStore
from simulator import Alert, DeviceClient, ServerCommand, load_identity
from tests.conftest import minio_settings
from tests.support.device import VOLUME_TOOL, ScriptedDevice
from tests.support.proxy import FaultProxy
from tests.support.speech import silence, spoken_pcm16k, to_opus_packets
from tests.support.waiting import wait_until

FRAME_S = 0.06


@pytest.fixture
async def runtime(db: DatabaseSettings, tmp_path: Path) -> AsyncIterator[StorageRuntime]:
    settings = Settings(database=db, data_dir=tmp_path, events=EventSettings(replay_interval_s=0.05))
    async with StorageRuntime(settings) as rt:
        yield rt


def server_settings(runtime: StorageRuntime, **server: object) -> Settings:
    return runtime.settings.model_copy(
        update={"server": ServerSettings(host="127.0.0.1", port=0, http_port=0, **server)}  # type: ignore[arg-type]
    )


@pytest.fixture
async def server(runtime: StorageRuntime) -> AsyncIterator[DeviceServer]:
    srv = DeviceServer(server_settings(runtime, hello_timeout_s=2.0), runtime=runtime)
    await srv.start()
    yield srv
    await srv.stop()


async def test_text_turn_streams_paced_audio_and_stops_after_the_tail(
    server: DeviceServer, runtime: StorageRuntime
) -> None:
    device = await ScriptedDevice.connect(server.websocket_url())
    hello = await device.hello()
    assert hello["type"] == "hello" and hello["transport"] == "websocket" and hello["session_id"]
    assert hello["audio_params"] == {"format": "opus", "sample_rate": 24000, "channels": 1, "frame_duration": 60}
    reply = await device.say("hello")
    assert reply.of_type("stt")[0]["text"] == "hello"
    assert reply.of_type("tts")[0]["state"] == "start"
    assert reply.of_type("tts", "sentence_start"), "sentences are announced"
    assert len(reply.audio) >= 5
    first, last = reply.audio[0][0], reply.audio[-1][0]
    played = len(reply.audio) * FRAME_S
    assert last - first >= played - 5 * FRAME_S, "frames are paced to real time, not dumped at once"
    assert reply.stop_at - first >= played - 0.01, "tts stop only after the last frame has had time to play"
    await device.close()

    store = runtime.store
    assert store is not None
    await wait_until(lambda: server.ctx is not None and not server.ctx.connections)
    await runtime.bus.drain()  # type: ignore[union-attr]
    info = await store.get_session(hello["session_id"])
    assert info.status == "ended" and info.device_id == "aa:bb:cc:dd:ee:01"
    timeline = await store.timeline(hello["session_id"])
    assert [m.role for m in timeline] == ["user", "assistant"] and timeline[0].content == "hello"
    assert timeline[1].audio_file_id is None or isinstance(timeline[1].audio_file_id, str)


async def test_device_tool_is_called_through_mcp_and_stored_in_order(
    server: DeviceServer, runtime: StorageRuntime
) -> None:
    device = await ScriptedDevice.connect(server.websocket_url())
    hello = await device.hello(mcp_tools=[VOLUME_TOOL])
    await wait_until(lambda: any(c.mcp.tools for c in server.ctx.connections.values()))  # type: ignore[union-attr]
    reply = await device.say("set the volume to 30")
    assert device.volume == 30 and device.tool_calls[0]["name"] == VOLUME_TOOL.name
    assert reply.audio, "the confirmation is spoken"
    await device.close()
    await wait_until(lambda: not server.ctx.connections)  # type: ignore[union-attr]
    await runtime.bus.drain()  # type: ignore[union-attr]
    roles = [(m.role, bool(m.tool_calls)) for m in await runtime.store.timeline(hello["session_id"])]  # type: ignore[union-attr]
    assert roles == [("user", False), ("assistant", True), ("tool", False), ("assistant", False)]


async def test_reconnect_keeps_the_context(server: DeviceServer, runtime: StorageRuntime) -> None:
    first = await ScriptedDevice.connect(server.websocket_url(), device_id="aa:bb:cc:dd:ee:02")
    await first.hello()
    await first.say("my name is Ada")
    await first.close()
    await wait_until(lambda: not server.ctx.connections)  # type: ignore[union-attr]
    await runtime.bus.drain()  # type: ignore[union-attr]
    second = await ScriptedDevice.connect(server.websocket_url(), device_id="aa:bb:cc:dd:ee:02")
    await second.hello()
    await wait_until(lambda: all(c.context_ready.done() for c in server.ctx.connections.values()))  # type: ignore[union-attr]
    conn = next(iter(server.ctx.connections.values()))  # type: ignore[union-attr]
    assert any("Ada" in m.content for m in conn.context_ready.result())
    await second.close()


async def test_missing_device_id_is_refused_before_the_upgrade(server: DeviceServer) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await connect(server.websocket_url(), open_timeout=5)
    assert refused.value.response.status_code == 400


async def test_bad_token_is_401_and_a_good_one_connects(runtime: StorageRuntime) -> None:
    srv = DeviceServer(server_settings(runtime, auth={"enabled": True, "secret": "s3cret"}), runtime=runtime)
    await srv.start()
    try:
        with pytest.raises(InvalidStatus) as refused:
            await ScriptedDevice.connect(srv.websocket_url(), Authorization="Bearer nope.123")
        assert refused.value.response.status_code == 401
        token = make_token("s3cret", "c0ffee00-0000-4000-8000-000000000001", "aa:bb:cc:dd:ee:01")
        device = await ScriptedDevice.connect(srv.websocket_url(), Authorization=f"Bearer {token}")
        assert (await device.hello())["session_id"]
        await device.close()
    finally:
        await srv.stop()


async def test_bad_messages_get_an_alert_and_the_connection_goes_on(server: DeviceServer) -> None:
    device = await ScriptedDevice.connect(server.websocket_url(), version=2)
    await device.hello()
    for bad in ("{not json", '{"type": "dance"}', '{"type": "listen", "state": "sideways"}'):
        await device.ws.send(bad)
        alert = await device.recv()
        assert '"alert"' in alert and '"error"' in alert
    await device.ws.send(b"\x00\x02\x00")  # truncated v2 header
    assert "bad audio frame" in await device.recv()
    reply = await device.say("hello")
    assert reply.audio, "still talking after all that"
    await device.close()


async def test_binary_before_hello_and_no_hello_close_cleanly(server: DeviceServer) -> None:
    device = await ScriptedDevice.connect(server.websocket_url())
    await device.ws.send(b"\x01\x02\x03")
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(device.ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1002
    silent = await ScriptedDevice.connect(server.websocket_url())
    with pytest.raises(ConnectionClosed) as timed_out:
        await asyncio.wait_for(silent.ws.recv(), 5)
    assert timed_out.value.rcvd is not None and timed_out.value.rcvd.code == 4000


async def test_abort_silences_within_a_frame(server: DeviceServer) -> None:
    device = await ScriptedDevice.connect(server.websocket_url())
    await device.hello()
    await device.send_json({"type": "listen", "state": "detect", "text": "tell me a long story please"})
    async with asyncio.timeout(20):
        while not isinstance(await device.recv(), bytes):
            pass
    await device.send_json({"type": "abort"})
    reply = await device.until_tts_stop(timeout=5)
    assert len(reply.audio) <= 4, "at most what was already in flight"


async def test_device_vanishing_mid_reply_keeps_what_was_said(server: DeviceServer, runtime: StorageRuntime) -> None:
    device = await ScriptedDevice.connect(server.websocket_url())
    hello = await device.hello()
    await device.send_json({"type": "listen", "state": "detect", "text": "tell me a long story please"})
    async with asyncio.timeout(20):
        while not isinstance(await device.recv(), bytes):
            pass
    device.ws.transport.abort()  # gone, no close handshake
    await wait_until(lambda: not server.ctx.connections)  # type: ignore[union-attr]
    await runtime.bus.drain()  # type: ignore[union-attr]
    store: ConversationStore = runtime.store  # type: ignore[assignment]
    info = await store.get_session(hello["session_id"])
    assert info.status == "ended"
    roles = [m.role for m in await store.timeline(hello["session_id"])]
    assert roles[0] == "user" and "assistant" in roles, "the part already spoken is stored"


async def test_spoken_turn_in_auto_mode_is_transcribed_and_only_the_speech_is_saved(
    s3_endpoint: str, db: DatabaseSettings, tmp_path: Path
) -> None:
    settings = Settings(
        database=db, minio=minio_settings(s3_endpoint), data_dir=tmp_path,
        events=EventSettings(replay_interval_s=0.05),
        server=ServerSettings(host="127.0.0.1", port=0, http_port=0, vad_min_silence_ms=500),
    )  # fmt: skip
    async with StorageRuntime(settings) as rt:
        srv = DeviceServer(settings, runtime=rt)
        await srv.start()
        try:
            device = await ScriptedDevice.connect(srv.websocket_url())
            hello = await device.hello()
            await device.send_json({"type": "listen", "state": "start", "mode": "auto"})
            speech = spoken_pcm16k("what time is it")
            pcm = np.concatenate([silence(1500), speech, silence(1500)])
            for packet in to_opus_packets(pcm):
                await device.send_audio(packet)
                await asyncio.sleep(0.01)
            reply = await device.until_tts_stop(timeout=60)
            heard = reply.of_type("stt")[0]["text"].lower()
            assert "time" in heard
            assert reply.audio
            await device.close()
            await wait_until(lambda: not srv.ctx.connections)  # type: ignore[union-attr]
            await rt.bus.drain()  # type: ignore[union-attr]
            await wait_until(lambda: not len(rt.bus.spool))  # type: ignore[union-attr]
            store = rt.store
            assert store is not None
            user = (await store.timeline(hello["session_id"]))[0]
            assert user.role == "user" and user.audio_file_id is not None
            audio = await store.get_audio_file(user.audio_file_id)
            total_ms = len(pcm) / 16
            speech_ms = len(speech) / 16
            assert speech_ms <= audio.duration_ms + 150, "the whole utterance is kept"
            assert audio.duration_ms < total_ms - 2000, "the silence around it is not"
        finally:
            await srv.stop()


async def test_remote_console_follows_a_device_live_and_bad_tokens_are_refused(runtime: StorageRuntime) -> None:
    srv = DeviceServer(server_settings(runtime, live_token="console-secret"), runtime=runtime)
    await srv.start()
    live_url = srv.websocket_url().replace("/xiaozhi/v1/", "/xiaozhi/live")
    try:
        with pytest.raises(InvalidStatus) as refused:
            await connect(live_url, additional_headers={"Authorization": "Bearer wrong"}, open_timeout=5)
        assert refused.value.response.status_code == 401
        console = await connect(
            live_url + "?device=aa:bb:cc:dd:ee:01", additional_headers={"Authorization": "Bearer console-secret"}
        )
        device = await ScriptedDevice.connect(srv.websocket_url())
        other = await ScriptedDevice.connect(srv.websocket_url(), device_id="aa:bb:cc:dd:ee:99")
        await other.hello()
        await device.hello()
        await device.say("hello")
        kinds = []
        async with asyncio.timeout(10):
            while "tts" not in kinds or "stt" not in kinds:
                event = json.loads(await console.recv())
                assert event["device_id"] == "aa:bb:cc:dd:ee:01", "only the device the console asked for"
                kinds.append(event["kind"])
        assert kinds[0] == "connect"
        await console.close()
        await device.close()
        await other.close()
    finally:
        await srv.stop()


async def test_llm_service_down_gives_the_device_an_alert_and_the_server_goes_on(runtime: StorageRuntime) -> None:
    remote = {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", "timeout_s": 2}
    pipeline = PipelineSettings(llm="remote", instances={"llm": {"remote": remote}})
    settings = server_settings(runtime).model_copy(update={"pipeline": pipeline})
    srv = DeviceServer(settings, runtime=runtime)
    await srv.start()
    try:
        device = await ScriptedDevice.connect(srv.websocket_url())
        await device.hello()
        reply = await device.say("hello")
        alerts = reply.of_type("alert")
        assert alerts and alerts[0]["status"] == "error" and "cannot connect" in alerts[0]["message"]
        assert reply.of_type("tts", "stop"), "the device is released, not left speaking"
        again = await device.say("hello")  # the connection is still usable
        assert again.of_type("alert")
        await device.close()
    finally:
        await srv.stop()


async def test_postgres_down_mid_conversation_never_stalls_the_device_and_nothing_is_lost(
    db: DatabaseSettings, tmp_path: Path
) -> None:
    proxy = await FaultProxy(db.host, db.port).start()
    settings = Settings(
        database=db.model_copy(update={"port": proxy.port}), data_dir=tmp_path,
        events=EventSettings(retries=1, retry_backoff_s=0.01, replay_interval_s=0.1),
        server=ServerSettings(host="127.0.0.1", port=0, http_port=0),
    )  # fmt: skip
    async with StorageRuntime(settings) as rt:
        srv = DeviceServer(settings, runtime=rt)
        await srv.start()
        try:
            device = await ScriptedDevice.connect(srv.websocket_url())
            hello = await device.hello()
            await device.say("hello")
            await proxy.cut()
            reply = await device.say("what time is it")
            assert reply.audio and reply.of_type("stt")[0]["text"] == "what time is it"
            await device.close()
            await wait_until(lambda: not srv.ctx.connections)  # type: ignore[union-attr]
            await rt.bus.drain()  # type: ignore[union-attr]
            assert len(rt.bus.spool) > 0  # type: ignore[union-attr]
            await proxy.restore()
            await wait_until(lambda: not len(rt.bus.spool), timeout=30)  # type: ignore[union-attr]
            timeline = await rt.store.timeline(hello["session_id"])  # type: ignore[union-attr]
            assert [m.role for m in timeline] == ["user", "assistant", "user", "assistant"]
            assert (await rt.store.get_session(hello["session_id"])).status == "ended"  # type: ignore[union-attr]
        finally:
            await srv.stop()
            await proxy.close()


@pytest.mark.parametrize("version", [2, 3])
async def test_binary_protocol_versions_2_and_3_hold_a_turn(server: DeviceServer, version: int) -> None:
    device = await ScriptedDevice.connect(server.websocket_url(), version=version)
    await device.hello()
    reply = await device.say("hello")
    assert len(reply.audio) >= 5 and all(len(p) < 400 for _, p in reply.audio)
    await device.close()


async def test_manual_mode_push_to_talk(server: DeviceServer) -> None:
    device = await ScriptedDevice.connect(server.websocket_url())
    await device.hello()
    await device.send_json({"type": "listen", "state": "start", "mode": "manual"})
    for packet in to_opus_packets(np.concatenate([spoken_pcm16k("what time is it"), silence(300)])):
        await device.send_audio(packet)
    await device.send_json({"type": "listen", "state": "stop"})
    reply = await device.until_tts_stop(timeout=60)
    assert "time" in reply.of_type("stt")[0]["text"].lower()
    await device.close()


async def test_one_misbehaving_device_does_not_disturb_another(server: DeviceServer) -> None:
    good = await ScriptedDevice.connect(server.websocket_url(), device_id="aa:bb:cc:dd:ee:10")
    bad = await ScriptedDevice.connect(server.websocket_url(), device_id="aa:bb:cc:dd:ee:11", version=3)
    await good.hello()
    await bad.hello()
    await bad.send_json({"type": "listen", "state": "start", "mode": "auto"})
    for i in range(200):
        await bad.ws.send(bytes([i % 256]) * (i % 7))  # truncated and garbage frames
    reply = await good.say("hello")
    assert reply.audio
    await good.close()
    await bad.close()


async def test_audio_sent_faster_than_real_time_loses_no_speech_and_a_hum_is_not_a_turn(server: DeviceServer) -> None:
    device = await ScriptedDevice.connect(server.websocket_url())
    await device.hello()
    await device.send_json({"type": "listen", "state": "start", "mode": "auto"})
    rng = np.random.default_rng(1)
    hum = (np.sin(np.arange(16000) * 2 * np.pi * 220 / 16000) * 3000 + rng.normal(0, 50, 16000)).astype(np.int16)
    for packet in to_opus_packets(np.concatenate([silence(300), hum, silence(1200)])):
        await device.send_audio(packet)
    await asyncio.sleep(1.5)
    for packet in to_opus_packets(np.concatenate([spoken_pcm16k("what time is it"), silence(1200)])):
        await device.send_audio(packet)
    reply = await device.until_tts_stop(timeout=60)
    assert [m["text"].lower().strip(" ?.") for m in reply.of_type("stt")] == ["what time is it"]
    await device.close()


async def test_wake_word_with_greetings_off_is_acknowledged_without_a_turn(runtime: StorageRuntime) -> None:
    srv = DeviceServer(server_settings(runtime, enable_greeting=False), runtime=runtime)
    await srv.start()
    try:
        device = await ScriptedDevice.connect(srv.websocket_url(), version=3)
        hello = await device.hello()
        assert hello["version"] == 3
        reply = await device.say("你好小智")
        assert reply.of_type("stt")[0]["text"] == "你好小智" and not reply.audio and not reply.of_type("tts", "start")
        answered = await device.say("hello")
        assert answered.audio, "ordinary text still gets a spoken answer"
        await device.close()
    finally:
        await srv.stop()


async def test_an_oversize_frame_closes_with_1009_and_the_session_is_kept(
    server: DeviceServer, runtime: StorageRuntime
) -> None:
    device = await ScriptedDevice.connect(server.websocket_url())
    hello = await device.hello()
    await device.say("hello")
    limit = server.settings.server.max_frame_bytes
    await device.ws.send(b"\x58" * (limit + 1))
    with pytest.raises(ConnectionClosed) as closed:
        await device.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # "message too big"
    # What was said before is stored and the session ended; the server takes the next connection.
    await wait_until(lambda: not server.ctx.connections)  # type: ignore[union-attr]
    await runtime.bus.drain()  # type: ignore[union-attr]
    assert [m.role for m in await runtime.store.timeline(hello["session_id"])] == ["user", "assistant"]  # type: ignore[union-attr]
    assert (await runtime.store.get_session(hello["session_id"])).status == "ended"  # type: ignore[union-attr]
    again = await ScriptedDevice.connect(server.websocket_url())
    await again.hello()
    assert (await again.say("hello")).audio
    await again.close()


async def test_a_silent_device_is_closed_as_idle_but_not_while_it_listens_to_a_reply(runtime: StorageRuntime) -> None:
    srv = DeviceServer(server_settings(runtime, idle_timeout_s=1.0), runtime=runtime)
    await srv.start()
    try:
        quiet = await ScriptedDevice.connect(srv.websocket_url())
        await quiet.hello()
        started = asyncio.get_running_loop().time()
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await quiet.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
        assert 0.9 < asyncio.get_running_loop().time() - started < 5

        # A reply much longer than the idle timeout plays to its end: the device sends nothing meanwhile.
        listener = await ScriptedDevice.connect(srv.websocket_url(), device_id="aa:bb:cc:dd:ee:02")
        await listener.hello()
        reply = await listener.say("tell me a long story please, with many many words in it, as long as it can be")
        assert len(reply.audio) * 0.06 > 2.0 and reply.of_type("tts", "stop")
        await listener.close()
    finally:
        await srv.stop()


async def test_listen_in_gets_the_devices_own_uplink_and_downlink_frames(server: DeviceServer) -> None:
    device = await ScriptedDevice.connect(server.websocket_url())
    bystander = server.live.subscribe()  # not listening in: no audio frames
    await device.hello()
    assert not server.live.wants_audio("aa:bb:cc:dd:ee:01")
    listening = server.live.subscribe(device_id="aa:bb:cc:dd:ee:01", audio=True, maxsize=4096)
    assert server.live.wants_audio("aa:bb:cc:dd:ee:01")
    await device.send_json({"type": "listen", "state": "start", "mode": "auto"})
    sent = to_opus_packets(np.concatenate([spoken_pcm16k("what time is it"), silence(1200)]))
    for packet in sent:
        await device.send_audio(packet)
    reply = await device.until_tts_stop(timeout=60)
    events = listening.drain()
    heard = [e.data["packet"] for e in events if e.kind == "uplink"]
    spoken = [e.data["packet"] for e in events if e.kind == "downlink"]
    assert heard == sent[: len(heard)] and len(heard) >= len(sent) - 2  # the mic closes when the reply starts
    assert spoken == [p for _, p in reply.audio]
    assert {e.data["sample_rate"] for e in events if e.kind == "downlink"} == {24000}
    assert not [e for e in bystander.drain() if e.kind in ("uplink", "downlink")]
    listening.close()
    assert not server.live.wants_audio("aa:bb:cc:dd:ee:01"), "nobody listens: frames are no longer produced"
    bystander.close()
    await device.close()


async def test_remote_listen_in_carries_frames_as_base64(runtime: StorageRuntime) -> None:
    srv = DeviceServer(server_settings(runtime, live_token="t"), runtime=runtime)
    await srv.start()
    live_url = srv.websocket_url().replace("/xiaozhi/v1/", "/xiaozhi/live")
    auth = {"Authorization": "Bearer t"}
    try:
        with pytest.raises(InvalidStatus) as refused:
            await connect(live_url + "?audio=1", additional_headers=auth, open_timeout=5)
        assert refused.value.response.status_code == 400
        console = await connect(live_url + "?device=aa:bb:cc:dd:ee:01&audio=1", additional_headers=auth)
        device = await ScriptedDevice.connect(srv.websocket_url())
        await device.hello()
        reply = await device.say("hello")
        frames = []
        async with asyncio.timeout(10):
            while len(frames) < len(reply.audio):
                event = LiveEvent.from_json(json.loads(await console.recv()))
                if event.kind == "downlink":
                    frames.append(event.data["packet"])
        assert frames == [p for _, p in reply.audio]
        await console.close()
        await device.close()
    finally:
        await srv.stop()


async def test_operator_commands_reach_the_device(server: DeviceServer, identity_dir: Path) -> None:
    client = DeviceClient(server.websocket_url(), load_identity(identity_dir))
    events = client.events()
    await client.connect()
    [summary] = server.devices()
    assert summary["device_id"] == client.identity.device_id and summary["state"] in ("idle", "listening")
    await server.command(client.identity.device_id, "alert", "maintenance at 22:00")
    alert = await events.next(Alert, timeout=5)
    assert alert.message == "maintenance at 22:00"
    with pytest.raises(ValueError, match="unknown device command"):
        await server.command(client.identity.device_id, "explode")
    await server.command(client.identity.device_id, "reboot")
    assert (await events.next(ServerCommand, timeout=5)).command == "reboot"
    await wait_until(lambda: not server.ctx.connections)  # type: ignore[union-attr]
    with pytest.raises(LookupError, match="not connected"):
        await server.command(client.identity.device_id, "alert", "anyone?")
    await client.close()
    again = DeviceClient(server.websocket_url(), load_identity(identity_dir))
    events = again.events()
    await again.connect()
    await server.command(again.identity.device_id, "goodbye")
    assert (await events.next(ServerCommand, timeout=5)).command == "goodbye"
    await wait_until(lambda: not server.ctx.connections)  # type: ignore[union-attr]
    await again.close()


@pytest.fixture
def identity_dir(tmp_path: Path) -> Path:
    return tmp_path / "simulator"


async def test_a_16khz_downlink_is_announced_and_spoken_at_16khz(runtime: StorageRuntime) -> None:
    srv = DeviceServer(server_settings(runtime, downlink_sample_rate=16000), runtime=runtime)
    await srv.start()
    try:
        device = await ScriptedDevice.connect(srv.websocket_url())
        hello = await device.hello()
        assert hello["audio_params"]["sample_rate"] == 16000
        reply = await device.say("hello")
        decoder = OpusDecoder(16000)
        pcm = [decoder.decode(p) for _, p in reply.audio]
        assert {len(f) for f in pcm} == {960}, "60 ms frames at 16 kHz"
        sentences = [m["text"] for m in reply.of_type("tts", "sentence_start")]
        spoken = sum([len(await EspeakTts(sample_rate=16000).synthesize(s)) for s in sentences]) / 16000
        # As long as the speech itself (each sentence's last frame is padded): not slowed down or sped up.
        assert spoken <= len(pcm) * 0.06 <= spoken + 0.06 * len(sentences) + 0.01
        await device.close()
    finally:
        await srv.stop()
