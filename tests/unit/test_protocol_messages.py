"""JSON text frames (spec §1.2, §1.4): device → server parsing, server → device builders, fuzzing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.protocol import messages as m
from server.protocol.messages import (
    EMOTIONS,
    Abort,
    AudioParams,
    Goodbye,
    Hello,
    Iot,
    Listen,
    Mcp,
    MessageError,
    Ping,
    UnknownMessageType,
    parse_device_message,
)

# What current firmware sends (WebsocketProtocol::GetHelloMessage), with every optional feature on.
FIRMWARE_HELLO = (
    '{"type":"hello","version":1,'
    '"features":{"mcp":true,"aec":true,"glyph_push":true},'
    '"text_font":{"bundle":"font_puhui","charset":"common","size":16,"bpp":4},'
    '"transport":"websocket",'
    '"audio_params":{"format":"opus","sample_rate":16000,"channels":1,"frame_duration":60}}'
)


def parse(obj: dict[str, Any]) -> m.DeviceMessage:
    return parse_device_message(json.dumps(obj, ensure_ascii=False))


def refused(obj: object) -> MessageError:
    text = obj if isinstance(obj, str | bytes) else json.dumps(obj, ensure_ascii=False)
    with pytest.raises(MessageError) as info:
        parse_device_message(text)
    reason = str(info.value)
    assert reason == info.value.reason and "\n" not in reason and reason
    return info.value


# --- hello ---------------------------------------------------------------------------------------


def test_firmware_hello() -> None:
    hello = parse_device_message(FIRMWARE_HELLO)
    assert isinstance(hello, Hello)
    assert hello.version == 1
    assert hello.transport == "websocket"
    assert hello.audio_params == AudioParams("opus", 16000, 1, 60)
    assert hello.features == {"mcp": True, "aec": True, "glyph_push": True}
    assert hello.supports_mcp
    assert hello.raw["text_font"]["bundle"] == "font_puhui"
    assert hello.session_id is None


def test_hello_as_utf8_bytes_with_version_3() -> None:
    hello = parse_device_message(FIRMWARE_HELLO.replace('"version":1', '"version":3').encode())
    assert isinstance(hello, Hello) and hello.version == 3


def test_mqtt_style_hello() -> None:
    hello = parse({"type": "hello", "version": 3, "transport": "udp", "features": {"mcp": True}, "audio_params": {}})
    assert isinstance(hello, Hello)
    assert hello.transport == "udp" and hello.audio_params == AudioParams()


def test_minimal_hello_gets_spec_defaults() -> None:
    hello = parse({"type": "hello"})
    assert hello == Hello(
        version=1, transport="websocket", audio_params=AudioParams("opus", 16000, 1, 60), features={}, raw=hello.raw
    )
    assert not hello.supports_mcp


def test_hello_null_fields_count_as_absent() -> None:
    hello = parse({"type": "hello", "version": None, "audio_params": None, "features": None, "transport": None})
    assert isinstance(hello, Hello)
    assert (hello.version, hello.transport, hello.audio_params, hello.features) == (1, "websocket", AudioParams(), {})


def test_go_test_client_hello_20ms() -> None:
    hello = parse({"type": "hello", "audio_params": {"format": "opus", "sample_rate": 24000, "frame_duration": 20}})
    assert isinstance(hello, Hello)
    assert hello.audio_params == AudioParams("opus", 24000, 1, 20)


@pytest.mark.parametrize("rate", m.OPUS_SAMPLE_RATES)
@pytest.mark.parametrize("duration", m.FRAME_DURATIONS_MS)
def test_hello_every_opus_rate_and_duration(rate: int, duration: int) -> None:
    hello = parse({"type": "hello", "audio_params": {"sample_rate": rate, "frame_duration": duration, "channels": 2}})
    assert isinstance(hello, Hello)
    assert hello.audio_params == AudioParams("opus", rate, 2, duration)


@pytest.mark.parametrize(
    ("audio_params", "reason"),
    [
        (
            {"sample_rate": 44100},
            "hello: audio_params.sample_rate must be one of 8000/12000/16000/24000/48000, got 44100",
        ),
        ({"sample_rate": 16000.0}, "audio_params.sample_rate must be one of"),
        ({"sample_rate": "16000"}, "audio_params.sample_rate must be one of"),
        ({"sample_rate": None}, "audio_params.sample_rate must be one of"),
        ({"frame_duration": 30}, "hello: audio_params.frame_duration must be one of 10/20/40/60/80/100/120, got 30"),
        ({"frame_duration": True}, "audio_params.frame_duration must be one of"),
        ({"channels": 3}, "hello: audio_params.channels must be one of 1/2, got 3"),
        ({"channels": True}, "audio_params.channels must be one of 1/2, got True"),
        ({"format": "pcm"}, "hello: audio_params.format must be 'opus', got 'pcm'"),
        ({"format": None}, "audio_params.format must be 'opus'"),
    ],
)
def test_hello_bad_audio_params(audio_params: dict[str, Any], reason: str) -> None:
    error = refused({"type": "hello", "audio_params": {"format": "opus", **audio_params}})
    assert reason in error.reason
    assert error.type_name == "hello"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"audio_params": [16000]}, "hello: audio_params must be an object, got [16000]"),
        ({"features": ["mcp"]}, "hello: features must be an object, got ['mcp']"),
        ({"version": "1"}, "hello: version must be a non-negative integer, got '1'"),
        ({"version": -1}, "hello: version must be a non-negative integer, got -1"),
        ({"version": True}, "hello: version must be a non-negative integer, got True"),
        ({"version": 1.5}, "hello: version must be a non-negative integer, got 1.5"),
        ({"transport": 1}, "hello: transport must be a string, got 1"),
    ],
)
def test_hello_bad_fields(fields: dict[str, Any], reason: str) -> None:
    assert refused({"type": "hello", **fields}).reason == reason


def test_session_id_is_optional_and_kept() -> None:
    assert parse({"type": "hello", "session_id": "abc"}).session_id == "abc"  # type: ignore[union-attr]
    assert parse({"type": "listen", "state": "stop", "session_id": ""}).session_id == ""  # type: ignore[union-attr]
    # A non-string session_id is ignored, not an error: it is informational on input.
    assert parse({"type": "ping", "session_id": 5}) == Ping(session_id=None)


# --- listen / abort / mcp / others ----------------------------------------------------------------


@pytest.mark.parametrize("mode", m.LISTEN_MODES)
def test_listen_start(mode: str) -> None:
    raw = f'{{"session_id":"s1","type":"listen","state":"start","mode":"{mode}"}}'
    assert parse_device_message(raw) == Listen(state="start", mode=mode, session_id="s1")  # type: ignore[arg-type]


def test_listen_start_without_mode() -> None:
    assert parse({"type": "listen", "state": "start"}) == Listen("start", None, None)


def test_listen_stop() -> None:
    assert parse_device_message('{"session_id":"","type":"listen","state":"stop"}') == Listen("stop", session_id="")


def test_listen_detect_wake_word_and_chat_text() -> None:
    assert parse({"type": "listen", "state": "detect", "text": "你好小智"}) == Listen("detect", text="你好小智")
    chat = parse_device_message('{"type":"listen","state":"detect","text":"今天天气怎么样？\\n"}')
    assert isinstance(chat, Listen) and chat.text == "今天天气怎么样？\n"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, "listen: missing state"),
        ({"state": "pause"}, "listen: state must be one of start/stop/detect, got 'pause'"),
        ({"state": "START"}, "listen: state must be one of start/stop/detect, got 'START'"),
        ({"state": None}, "listen: state must be one of start/stop/detect, got None"),
        ({"state": "start", "mode": "push"}, "listen: mode must be one of auto/manual/realtime, got 'push'"),
        ({"state": "start", "mode": 1}, "listen: mode must be one of auto/manual/realtime, got 1"),
        ({"state": "detect", "text": 5}, "listen: text must be a string, got 5"),
    ],
)
def test_listen_bad_fields(fields: dict[str, Any], reason: str) -> None:
    error = refused({"type": "listen", **fields})
    assert error.reason == reason and error.type_name == "listen"


def test_abort() -> None:
    assert parse({"type": "abort"}) == Abort()
    assert parse({"type": "abort", "reason": "wake_word_detected"}) == Abort("wake_word_detected")
    assert refused({"type": "abort", "reason": {}}).reason == "abort: reason must be a string, got {}"


def test_mcp_envelope() -> None:
    payload = {"jsonrpc": "2.0", "id": 1, "result": {"protocolVersion": "2024-11-05"}}
    assert parse({"session_id": "s", "type": "mcp", "payload": payload}) == Mcp(payload, "s")
    assert refused({"type": "mcp"}).reason == "mcp: payload must be an object, got None"
    assert refused({"type": "mcp", "payload": "{}"}).reason == "mcp: payload must be an object, got '{}'"


def test_goodbye_ping_iot() -> None:
    assert parse({"type": "goodbye", "session_id": "x"}) == Goodbye("x")
    assert parse({"type": "ping"}) == Ping()
    legacy = {"type": "iot", "update": True, "descriptors": [{"name": "Speaker", "methods": {}}]}
    assert parse(legacy) == Iot(raw=legacy)


# --- envelope refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "message is not JSON: Expecting value: line 1 column 1 (char 0)"),
        ("hello", "message is not JSON: Expecting value"),
        ('{"type":"hello"', "message is not JSON: Expecting ',' delimiter"),
        ('{"type":"ping"} {}', "message is not JSON: Extra data"),
        ('{"type":"ping","x":NaN}', "message is not JSON: non-standard JSON constant NaN"),
        ('{"type":"ping","x":-Infinity}', "message is not JSON: non-standard JSON constant -Infinity"),
        ("[" * 100_000, "message of 100000 characters exceeds 65536"),
        ("[]", "message must be a JSON object, got list"),
        ('"hello"', "message must be a JSON object, got str"),
        ("42", "message must be a JSON object, got int"),
        ("null", "message must be a JSON object, got NoneType"),
        ("{}", "message has no type"),
        ('{"type":null}', "message has no type"),
        ('{"type":1}', "message type must be a string, got 1"),
        ('{"type":["hello"]}', "message type must be a string, got ['hello']"),
    ],
)
def test_envelope_refusals(text: str, reason: str) -> None:
    assert refused(text).reason.startswith(reason)


def test_deep_nesting_is_a_message_error() -> None:
    # Under the size limit but beyond the JSON scanner's recursion limit.
    assert refused("[" * 30_000 + "]" * 30_000).reason == "message is not JSON: nested too deeply"


def test_huge_integer_is_a_message_error() -> None:
    assert refused('{"type":"ping","n":' + "9" * 5000 + "}").reason.startswith("message is not JSON")


def test_invalid_utf8() -> None:
    error = refused(b'{"type":"listen","state":"detect","text":"\xff"}')
    assert error.reason == "message is not valid UTF-8 (invalid start byte at byte 42)"


def test_non_text_input() -> None:
    with pytest.raises(MessageError, match="message must be str or bytes, not dict"):
        parse_device_message({"type": "ping"})  # type: ignore[arg-type]


def test_oversize_text_and_bytes() -> None:
    body = '{"type":"listen","state":"detect","text":"' + "字" * 100 + '"}'
    assert isinstance(parse_device_message(body, max_chars=len(body)), Listen)
    with pytest.raises(MessageError, match=f"message of {len(body)} characters exceeds {len(body) - 1}"):
        parse_device_message(body, max_chars=len(body) - 1)
    encoded = body.encode()  # 3 bytes per 字: the byte length is not the character count
    assert isinstance(parse_device_message(encoded, max_chars=len(body)), Listen)
    with pytest.raises(MessageError, match="bytes exceeds 10 characters"):
        parse_device_message(encoded, max_chars=10)


def test_unknown_type_keeps_the_name() -> None:
    with pytest.raises(UnknownMessageType) as info:
        parse_device_message('{"type":"stt","text":"x"}')
    assert info.value.type_name == "stt"
    assert info.value.reason == "unknown message type 'stt'"
    assert isinstance(info.value, MessageError)


def test_unknown_type_error_is_one_bounded_line() -> None:
    name = "x\n" * 10_000
    with pytest.raises(UnknownMessageType) as info:
        parse_device_message(json.dumps({"type": name}))
    assert info.value.type_name == name
    assert "\n" not in info.value.reason and len(info.value.reason) < 100


def test_messages_are_frozen() -> None:
    listen = parse({"type": "listen", "state": "stop"})
    with pytest.raises(AttributeError):
        listen.state = "start"  # type: ignore[misc,union-attr]


# --- server → device builders ---------------------------------------------------------------------


def test_server_hello() -> None:
    assert m.server_hello("sid") == {
        "type": "hello",
        "version": 1,
        "transport": "websocket",
        "session_id": "sid",
        "audio_params": {"format": "opus", "sample_rate": 24000, "channels": 1, "frame_duration": 60},
    }
    assert m.server_hello("sid", sample_rate=16000, frame_duration=20)["audio_params"] == {
        "format": "opus",
        "sample_rate": 16000,
        "channels": 1,
        "frame_duration": 20,
    }


@pytest.mark.parametrize(("rate", "duration"), [(44100, 60), (24000, 30), (True, 60), (24000, 0)])
def test_server_hello_refuses_impossible_audio(rate: int, duration: int) -> None:
    with pytest.raises(ValueError):
        m.server_hello("sid", rate, duration)


def test_text_builders() -> None:
    assert m.stt("s", "你好") == {"type": "stt", "text": "你好", "session_id": "s"}
    assert m.tts_start("s") == {"type": "tts", "state": "start", "session_id": "s"}
    assert m.tts_sentence_start("s", "好的。") == {
        "type": "tts",
        "state": "sentence_start",
        "text": "好的。",
        "session_id": "s",
    }
    assert m.tts_sentence_end("s", "好的。") == {
        "type": "tts",
        "state": "sentence_end",
        "text": "好的。",
        "session_id": "s",
    }
    assert m.tts_stop("s") == {"type": "tts", "state": "stop", "session_id": "s"}
    assert m.system_reboot("s") == {"type": "system", "command": "reboot", "session_id": "s"}
    assert m.goodbye("s") == {"type": "goodbye", "session_id": "s"}
    assert m.pong("s", 1700000000) == {"type": "pong", "timestamp": 1700000000, "session_id": "s"}
    payload = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"cursor": ""}}
    assert m.mcp("s", payload) == {"type": "mcp", "payload": payload, "session_id": "s"}


def test_llm_emotion() -> None:
    assert m.llm_emotion("s", "happy") == {"type": "llm", "text": "🙂", "emotion": "happy", "session_id": "s"}
    assert m.llm_emotion("s", "funny", "😂")["emotion"] == "funny"
    assert m.llm_emotion("s", "furious") == {"type": "llm", "text": "😶", "emotion": "neutral", "session_id": "s"}
    assert m.llm_emotion("s", "furious", "😡")["text"] == "😡"


def test_emotion_table_matches_the_spec() -> None:
    spec = (
        "neutral, happy, laughing, funny, sad, angry, crying, loving, embarrassed, surprised, shocked, thinking, "
        "winking, cool, relaxed, delicious, kissy, confident, sleepy, silly, confused"
    )
    assert list(EMOTIONS) == spec.split(", ")
    assert len(set(EMOTIONS.values())) == len(EMOTIONS)


def test_alert_and_error() -> None:
    assert m.alert("s", "警告", "电量低", "sad") == {
        "type": "alert",
        "status": "警告",
        "message": "电量低",
        "emotion": "sad",
        "session_id": "s",
    }
    # The firmware has no "error" type; errors are alerts it will actually show.
    assert m.error("s", "unknown message type 'foo'") == {
        "type": "alert",
        "status": "error",
        "message": "unknown message type 'foo'",
        "emotion": "sad",
        "session_id": "s",
    }


def test_builders_serialise_as_utf8_json() -> None:
    text = json.dumps(m.stt("s", "你好"), ensure_ascii=False)
    assert "你好" in text and json.loads(text)["text"] == "你好"


# --- fuzzing -------------------------------------------------------------------------------------

_json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json_values = st.recursive(
    _json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
_FIELDS = ["version", "transport", "features", "audio_params", "state", "mode", "text", "reason", "payload",
           "session_id"]  # fmt: skip
_AUDIO_FIELDS = ["format", "sample_rate", "channels", "frame_duration"]
_near_valid_value = (
    _json_values
    | st.sampled_from(list(m.LISTEN_STATES) + list(m.LISTEN_MODES) + ["opus", "websocket"])
    | st.sampled_from(m.OPUS_SAMPLE_RATES + m.FRAME_DURATIONS_MS + (1, 2, 3))
    | st.dictionaries(st.sampled_from(_AUDIO_FIELDS), st.sampled_from([16000, 60, 1, "opus", 7, None]))
)


def _parse_or_error(text: str | bytes) -> None:
    try:
        message = parse_device_message(text)
    except MessageError as exc:
        assert exc.reason and "\n" not in exc.reason
        return
    assert isinstance(message, Hello | Listen | Abort | Mcp | Goodbye | Ping | Iot)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_arbitrary_text(text: str) -> None:
    _parse_or_error(text)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _parse_or_error(data)


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_fuzz_arbitrary_json_values(value: object) -> None:
    _parse_or_error(json.dumps(value))


@settings(max_examples=500, deadline=None)
@given(
    type_name=st.sampled_from(["hello", "listen", "abort", "mcp", "goodbye", "ping", "iot", "stt", ""]),
    fields=st.dictionaries(st.sampled_from(_FIELDS), _near_valid_value, max_size=5),
)
def test_fuzz_known_types_with_random_fields(type_name: str, fields: dict[str, Any]) -> None:
    _parse_or_error(json.dumps({"type": type_name, **fields}, ensure_ascii=False))
