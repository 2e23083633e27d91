"""The simulated device against scripted fake servers: headers, hello, state machine, playback faults,
MCP, and every kind of bad server input (reported, ignored, never fatal)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from server.audio.encoder import OpusEncoder
from server.protocol import framing, mcp, messages
from simulator.client import DeviceClient
from simulator.errors import ChannelUnavailable, SimulatorError
from simulator.events import ProtocolError, StateChanged, ToolCalled
from simulator.identity import DeviceIdentity
from simulator.scenario import Scenario, Step, run_step
from simulator.session import WAKE_GRACE_S, DeviceSession
from simulator.terminal import Terminal
from simulator.turns import TurnReport

IDENTITY = DeviceIdentity("02:11:22:33:44:55", "5b0f3a52-0000-4000-8000-00000000abcd")
SESSION = "sess-1"
Handler = Callable[[ServerConnection], Awaitable[None]]


def tts_packets(n: int) -> list[bytes]:
    encoder = OpusEncoder(24000, 60)
    t = np.arange(1440 * n) / 24000
    pcm = (3000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    return list(encoder.encode(pcm))


class Fake:
    """What the fake server saw."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.received: list[Any] = []

    def json_of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.received if isinstance(m, dict) and m.get("type") == kind]


@contextlib.asynccontextmanager
async def fake_server(
    script: Callable[[ServerConnection, Fake], Awaitable[None]],
    refuse: tuple[int, str] | None = None,
) -> AsyncIterator[tuple[str, Fake]]:
    fake = Fake()

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        fake.headers = dict(request.headers.raw_items())
        if refuse is not None:
            return connection.respond(HTTPStatus(refuse[0]), refuse[1])
        return None

    async def handler(ws: ServerConnection) -> None:
        with contextlib.suppress(Exception):
            await script(ws, fake)

    async with serve(handler, "127.0.0.1", 0, process_request=process_request) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/xiaozhi/v1/", fake


async def recv_json(ws: ServerConnection, fake: Fake) -> dict[str, Any]:
    while True:
        data = await ws.recv()
        if isinstance(data, str):
            message = json.loads(data)
            fake.received.append(message)
            return message
        fake.received.append(data)


async def hello(ws: ServerConnection, fake: Fake, sample_rate: int = 24000, version: int | None = None) -> None:
    """Answer the device's hello as our server does: the version it asked for (unless ``version`` is given)."""
    asked = await recv_json(ws, fake)
    said = asked["version"] if version is None else version
    await ws.send(json.dumps(messages.server_hello(SESSION, sample_rate, 60, version=said)))


async def send_audio(ws: ServerConnection, version: int, packet: bytes) -> None:
    await ws.send(packet if version == 1 else framing.encode_frame(version, framing.BinaryFrame("audio", packet)))


async def paced_reply(ws: ServerConnection, version: int, packets: list[bytes], text: str = "hi") -> None:
    """A well-behaved server: 3 frames at once, then one per 60 ms, stop after the tail has played."""
    await ws.send(json.dumps(messages.tts_start(SESSION)))
    await ws.send(json.dumps(messages.tts_sentence_start(SESSION, text)))
    for i, packet in enumerate(packets):
        if i >= 3:
            await asyncio.sleep(0.06)
        await send_audio(ws, version, packet)
    await asyncio.sleep(3 * 0.06 + 0.15)
    await ws.send(json.dumps(messages.tts_stop(SESSION)))


async def one_turn(client: DeviceClient) -> tuple[TurnReport, list[str]]:
    """Connect, end speech at once, and wait for the reply: its report, and the protocol errors on the way."""
    events = client.events()
    await client.connect()
    client.mark_end_of_speech()
    report = await client.wait_for_turn(timeout=10)
    errors = [e.message for e in events.drain() if isinstance(e, ProtocolError)]
    await client.close()
    return report, errors


async def test_handshake_headers_and_hello_are_the_firmwares() -> None:
    async def script(ws: ServerConnection, fake: Fake) -> None:
        await hello(ws, fake, sample_rate=16000)
        await ws.wait_closed()

    async with fake_server(script) as (url, fake):
        client = DeviceClient(url, IDENTITY, token="tok123", protocol_version=3)
        await client.connect()
        assert client.state == "idle" and client.session_id == SESSION and client.downlink_sample_rate == 16000
        await client.close()
    assert fake.headers["Authorization"] == "Bearer tok123"
    assert fake.headers["Protocol-Version"] == "3"
    assert fake.headers["Device-Id"] == IDENTITY.device_id and fake.headers["Client-Id"] == IDENTITY.client_id
    assert "permessage-deflate" not in fake.headers.get("Sec-WebSocket-Extensions", "")
    assert fake.received[0] == {
        "type": "hello", "version": 3, "features": {"mcp": True}, "transport": "websocket",
        "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1, "frame_duration": 60},
    }  # fmt: skip


async def test_missing_hello_is_a_clear_error() -> None:
    async def script(ws: ServerConnection, fake: Fake) -> None:
        await recv_json(ws, fake)
        await ws.send(json.dumps({"type": "hello", "transport": "udp", "session_id": "x"}))  # ignored by firmware
        await ws.wait_closed()

    async with fake_server(script) as (url, _):
        client = DeviceClient(url, IDENTITY, hello_timeout_s=0.5)
        with pytest.raises(SimulatorError, match="server hello missing or late"):
            await client.connect()
        assert client.state == "idle" and not client.connected


async def test_close_before_hello_names_the_close_code() -> None:
    async def script(ws: ServerConnection, fake: Fake) -> None:
        await recv_json(ws, fake)
        await ws.close(4000, "no thanks")

    async with fake_server(script) as (url, _):
        with pytest.raises(SimulatorError, match=r"before its hello.*4000.*no thanks"):
            await DeviceClient(url, IDENTITY).connect()


async def test_refused_handshake_names_status_and_reason() -> None:
    async with fake_server(lambda ws, fake: asyncio.sleep(0), refuse=(401, "unauthorized: bad signature\n")) as (
        url,
        _,
    ):
        with pytest.raises(SimulatorError, match=r"HTTP 401 .*unauthorized: bad signature"):
            await DeviceClient(url, IDENTITY, token="nope").connect()


async def test_malformed_server_messages_are_reported_and_ignored() -> None:
    bad_texts = [
        "{not json",
        "[1, 2]",
        '{"type": 5}',
        '{"type": "stt"}',
        '{"type": "tts", "state": "dance"}',
        '{"type": "alert", "status": "x"}',
        '{"type": "hello", "audio_params": "fast"}',
        '{"type": "dance"}',
    ]

    async def script(ws: ServerConnection, fake: Fake) -> None:
        await hello(ws, fake)
        for text in bad_texts:
            await ws.send(text)
        await ws.send(b"\x00\x02\x00")  # truncated v2 header
        await send_audio(ws, 2, tts_packets(1)[0])  # audio outside speaking: discarded like firmware
        await ws.send(json.dumps(messages.stt(SESSION, "what time is it")))
        await ws.send(json.dumps({"type": "pong", "timestamp": 1}))  # known, nothing to do: not an error
        await paced_reply(ws, 2, [*tts_packets(5), b"\xff\xff\xff"])
        await ws.wait_closed()

    async with fake_server(script) as (url, _):
        client = DeviceClient(url, IDENTITY, protocol_version=2)
        report, errors = await one_turn(client)
    assert len(errors) == len(bad_texts) + 2, errors
    assert any("not JSON" in e for e in errors) and any("bad binary frame" in e for e in errors)
    assert any("undecodable" in e for e in errors) and any("'dance'" in e for e in errors)
    assert client.stats.frames_ignored == 1 and client.stats.bad_frames == 1
    assert report.stt == "what time is it" and report.sentences == ("hi",)
    assert report.frames_received == report.frames_played == 6 and report.clean
    assert report.first_frame_latency_s is not None and report.first_frame_latency_s < 1


async def test_a_server_that_dumps_audio_and_stops_early_drops_and_clips() -> None:
    async def script(ws: ServerConnection, fake: Fake) -> None:
        await hello(ws, fake)
        await ws.send(json.dumps(messages.tts_start(SESSION)))
        for packet in tts_packets(50):
            await ws.send(packet)
        await asyncio.sleep(0.3)
        await ws.send(json.dumps(messages.tts_stop(SESSION)))
        await ws.wait_closed()

    async with fake_server(script) as (url, _):
        client = DeviceClient(url, IDENTITY)
        await client.send_text("hello")
        report = await client.wait_for_turn(timeout=10)
        await client.close()
    assert report.frames_received == 50
    assert report.dropped >= 9, "only 40 fit in the queue (+ the one playing)"
    assert report.clipped >= 30, "tts stop came with most of the queue unplayed"
    assert not report.clean and report.ended_by == "tts_stop"


async def test_auto_mode_listens_again_after_tts_stop_and_mutes_the_mic_while_speaking() -> None:
    async def script(ws: ServerConnection, fake: Fake) -> None:
        await hello(ws, fake)
        await recv_json(ws, fake)  # listen start
        await ws.send(json.dumps(messages.stt(SESSION, "hi")))
        await paced_reply(ws, 1, tts_packets(4))
        await recv_json(ws, fake)  # the device's listen start after tts stop
        await ws.wait_closed()

    async with fake_server(script) as (url, fake):
        client = DeviceClient(url, IDENTITY)
        events = client.events()
        await client.listen_start("auto")
        assert client.state == "listening"
        await events.next(StateChanged, where=lambda e: e.new == "speaking", timeout=5)
        assert await client.send_opus(b"\x08" * 20) is False, "mic off while speaking"
        client.mark_end_of_speech()
        report = await client.wait_for_turn(timeout=10)
        await asyncio.sleep(0.1)
        await client.close()
    assert report.clean and client.stats.packets_muted == 1
    states = [(e.old, e.new) for e in events.drain() if isinstance(e, StateChanged)]
    assert states[:2] == [("speaking", "listening"), ("listening", "idle")]
    assert [m.get("state") for m in fake.json_of_type("listen")] == ["start", "start"]
    assert fake.json_of_type("listen")[1]["mode"] == "auto" and fake.json_of_type("listen")[1]["session_id"] == SESSION


async def test_manual_mode_goes_idle_after_the_reply() -> None:
    async def script(ws: ServerConnection, fake: Fake) -> None:
        await hello(ws, fake)
        while (await recv_json(ws, fake)).get("state") != "stop":
            pass
        await ws.send(json.dumps(messages.stt(SESSION, "hi")))
        await paced_reply(ws, 1, tts_packets(3))
        await ws.wait_closed()

    async with fake_server(script) as (url, fake):
        client = DeviceClient(url, IDENTITY)
        await client.listen_start("manual")
        assert await client.send_opus(tts_packets(1)[0])
        await client.listen_stop()
        assert client.state == "idle"
        report = await client.wait_for_turn(timeout=10)
        assert client.state == "idle" and report.clean
        await client.close()
    assert [m.get("state") for m in fake.json_of_type("listen")] == ["start", "stop"]
    assert sum(isinstance(m, bytes) for m in fake.received) == 1


async def test_mcp_requests_are_answered_over_the_channel() -> None:
    async def script(ws: ServerConnection, fake: Fake) -> None:
        await hello(ws, fake)
        for payload in (
            mcp.initialize_request(1),
            mcp.tools_list_request(2),
            mcp.tools_call_request(3, "self.audio_speaker.set_volume", {"volume": 30}),
            mcp.tools_call_request(4, "self.nope", {}),
        ):
            await ws.send(json.dumps(messages.mcp(SESSION, payload)))
            await recv_json(ws, fake)
        await ws.wait_closed()

    async with fake_server(script) as (url, fake):
        client = DeviceClient(url, IDENTITY)
        events = client.events()
        await client.connect()
        called = await events.next(ToolCalled, timeout=5)
        await asyncio.sleep(0.2)
        await client.close()
    assert called.name == "self.audio_speaker.set_volume" and not called.is_error and client.device.volume == 30
    replies = [mcp.parse_mcp_payload(m["payload"]) for m in fake.json_of_type("mcp")]
    assert [r.id for r in replies] == [1, 2, 3, 4]  # type: ignore[union-attr]
    assert replies[3].error is not None and replies[3].error.code == -32601  # type: ignore[union-attr]
    assert all(m["session_id"] == SESSION for m in fake.json_of_type("mcp"))


async def test_mcp_initialize_sent_before_the_hello_is_answered_after_it() -> None:
    # A Go reference server sends MCP initialize as soon as the socket opens, before its hello; the firmware
    # answers it whenever it comes, and so must we (else the server never asks for the device's tools).
    async def script(ws: ServerConnection, fake: Fake) -> None:
        await recv_json(ws, fake)
        await ws.send(json.dumps(messages.mcp(SESSION, mcp.initialize_request(1))))
        await ws.send(json.dumps(messages.server_hello(SESSION, 24000, 60)))
        await recv_json(ws, fake)
        await ws.wait_closed()

    async with fake_server(script) as (url, fake):
        client = DeviceClient(url, IDENTITY)
        await client.connect()
        for _ in range(100):
            if fake.json_of_type("mcp"):
                break
            await asyncio.sleep(0.02)
        await client.close()
    [reply] = [mcp.parse_mcp_payload(m["payload"]) for m in fake.json_of_type("mcp")]
    assert reply.id == 1 and reply.error is None and "serverInfo" in reply.result  # type: ignore[union-attr]
    assert client.stats.protocol_errors == 0


@pytest.mark.parametrize("said", [1, None])
async def test_a_server_that_speaks_only_version_1_gets_raw_opus(said: int | None) -> None:
    # The public reference servers frame no audio; their hello says version 1 (or 0, or nothing).
    async def script(ws: ServerConnection, fake: Fake) -> None:
        await recv_json(ws, fake)
        reply = messages.server_hello(SESSION, 24000, 60)
        if said is None:
            del reply["version"]
        await ws.send(json.dumps(reply))
        while not any(isinstance(m, bytes) for m in fake.received):  # listen start, then the device's packet
            fake.received.append(await ws.recv())
        await paced_reply(ws, 1, tts_packets(4))
        await ws.wait_closed()

    packet = tts_packets(1)[0]
    async with fake_server(script) as (url, fake):
        client = DeviceClient(url, IDENTITY, protocol_version=3)
        events = client.events()
        await client.connect()
        await client.listen_start()
        await client.send_opus(packet)
        client.mark_end_of_speech()
        report = await client.wait_for_turn(timeout=10)
        notes = [e.message for e in events.drain() if isinstance(e, ProtocolError)]
        await client.close()
    assert client.version == 1
    assert [n for n in notes if "asked for binary protocol version 3" in n and "raw opus (version 1)" in n], notes
    assert packet in fake.received  # no v3 header in front of it
    assert report.frames_received == report.frames_played == 4 and client.stats.bad_frames == 0


@pytest.mark.parametrize("greets", [False, True])
async def test_a_wake_word_step_plays_a_greeting_if_one_comes_and_passes_if_none_does(greets: bool) -> None:
    # Some servers answer the wake word with nothing at all (the Python reference with its default wake words);
    # a scenario's wake step must not wait out its timeout for a greeting that is not coming.
    async def script(ws: ServerConnection, fake: Fake) -> None:
        await hello(ws, fake)
        while "detect" not in json.dumps(await recv_json(ws, fake)):
            pass
        if greets:
            await paced_reply(ws, 1, tts_packets(3), text="你好呀")
        await ws.wait_closed()

    async with fake_server(script) as (url, _):
        session = DeviceSession(DeviceClient(url, IDENTITY), Terminal(io.StringIO()))
        await session.start()
        scenario = Scenario(Path("s.yaml"), [], timeout=30)
        result = await asyncio.wait_for(run_step(session, scenario, Step(1, "wake", "你好小智")), WAKE_GRACE_S + 5)
        await session.close()
    assert result.problems == []
    assert (result.report is not None) == greets  # a greeting that came was played through to its end
    if greets:
        assert result.report is not None and result.report.sentences == ("你好呀",)


async def test_a_plain_text_refusal_before_the_hello_is_an_error_naming_it_not_a_retry() -> None:
    # The Python reference server answers a bad token after the upgrade: the text "认证失败", then close.
    async def script(ws: ServerConnection, fake: Fake) -> None:
        await recv_json(ws, fake)
        await ws.send("认证失败")
        await ws.close()

    async with fake_server(script) as (url, _):
        client = DeviceClient(url, IDENTITY)
        with pytest.raises(SimulatorError, match="server refused the device before its hello: '认证失败'") as error:
            await client.connect()
    assert not isinstance(error.value, ChannelUnavailable)  # a refusal: reconnecting would only repeat it


async def test_what_other_servers_send_is_taken_as_the_firmware_takes_it() -> None:
    # A hello with audio params a device cannot use still opens the channel (defaults apply, and we say so);
    # a Go server's llm without an emotion and its speak_request/notify types are not errors.
    async def script(ws: ServerConnection, fake: Fake) -> None:
        await recv_json(ws, fake)
        reply = messages.server_hello(SESSION, 24000, 60)
        reply["audio_params"]["sample_rate"] = 44100
        await ws.send(json.dumps(reply))
        await ws.send(json.dumps({"type": "llm", "text": "🙂", "session_id": SESSION}))
        await ws.send(json.dumps({"type": "speak_request", "auto_listen": True}))
        await ws.send(json.dumps({"type": "notify", "subtitles": "hi"}))
        await paced_reply(ws, 1, tts_packets(3))
        await ws.wait_closed()

    async with fake_server(script) as (url, _):
        client = DeviceClient(url, IDENTITY)
        report, errors = await one_turn(client)
    assert len(errors) == 1 and "sample_rate" in errors[0] and "using 24000 Hz, 60 ms" in errors[0], errors
    assert client.downlink_sample_rate == 24000 and report.frames_played == 3


async def test_disconnect_mid_reply_ends_the_turn_and_fails_no_one() -> None:
    async def script(ws: ServerConnection, fake: Fake) -> None:
        await hello(ws, fake)
        await ws.send(json.dumps(messages.tts_start(SESSION)))
        for packet in tts_packets(10):
            await ws.send(packet)
        await asyncio.sleep(0.1)
        await ws.close(1001, "going away")

    async with fake_server(script) as (url, _):
        client = DeviceClient(url, IDENTITY)
        await client.send_text("hello")
        report = await client.wait_for_turn(timeout=10)
        assert report.ended_by == "disconnect" and report.aborted and report.clipped > 0
        assert client.state == "idle" and not client.connected and client.close_code == 1001
        with pytest.raises(SimulatorError, match="not connected"):
            await client.send_opus(b"x")
