"""JSON text frames of the xiaozhi device protocol (spec §1.2, §1.4).

Device → server: :func:`parse_device_message` turns one text frame into a typed, frozen message or
raises :class:`MessageError` with a one-line reason.  The server is expected to log the reason,
answer with :func:`error` and keep the connection: a device (or a test page) sending one odd
message is not a reason to drop a voice session.

Server → device: the builders return plain dicts, ready for ``json.dumps(..., ensure_ascii=False)``
(the texts are Chinese most of the time, and the firmware parses UTF-8 fine).  Every builder takes
the session id because the firmware echoes it and the reference servers always send it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = [
    "DEFAULT_DOWNLINK_FRAME_DURATION",
    "DEFAULT_DOWNLINK_SAMPLE_RATE",
    "EMOTIONS",
    "FRAME_DURATIONS_MS",
    "LISTEN_MODES",
    "LISTEN_STATES",
    "MAX_MESSAGE_CHARS",
    "OPUS_SAMPLE_RATES",
    "Abort",
    "AudioParams",
    "DeviceMessage",
    "Goodbye",
    "Hello",
    "Iot",
    "Listen",
    "ListenMode",
    "ListenState",
    "Mcp",
    "MessageError",
    "Ping",
    "UnknownMessageType",
    "alert",
    "error",
    "goodbye",
    "llm_emotion",
    "mcp",
    "parse_device_message",
    "pong",
    "server_hello",
    "stt",
    "system_reboot",
    "tts_sentence_end",
    "tts_sentence_start",
    "tts_start",
    "tts_stop",
]

# The rates an opus encoder/decoder accepts (RFC 6716 §2); anything else cannot be decoded.
OPUS_SAMPLE_RATES: Final = (8000, 12000, 16000, 24000, 48000)
# Opus packets last 2.5-120 ms; the firmware and the Go test client use 10-120 ms multiples of 10/20.
FRAME_DURATIONS_MS: Final = (10, 20, 40, 60, 80, 100, 120)
MAX_MESSAGE_CHARS: Final = 65536

# The firmware's downlink assumption when the server hello has no audio_params (spec §1.2).
DEFAULT_DOWNLINK_SAMPLE_RATE: Final = 24000
DEFAULT_DOWNLINK_FRAME_DURATION: Final = 60

ListenState = Literal["start", "stop", "detect"]
ListenMode = Literal["auto", "manual", "realtime"]
LISTEN_STATES: Final[tuple[ListenState, ...]] = ("start", "stop", "detect")
LISTEN_MODES: Final[tuple[ListenMode, ...]] = ("auto", "manual", "realtime")

# Emotion names the firmware has faces for, with the emoji the Python reference server sends as
# ``text`` (core/utils/textUtils.py EMOJI_MAP, inverted).
EMOTIONS: Final[dict[str, str]] = {
    "neutral": "😶",
    "happy": "🙂",
    "laughing": "😆",
    "funny": "😂",
    "sad": "😔",
    "angry": "😠",
    "crying": "😭",
    "loving": "😍",
    "embarrassed": "😳",
    "surprised": "😲",
    "shocked": "😱",
    "thinking": "🤔",
    "winking": "😉",
    "cool": "😎",
    "relaxed": "😌",
    "delicious": "🤤",
    "kissy": "😘",
    "confident": "😏",
    "sleepy": "😴",
    "silly": "😜",
    "confused": "🙄",
}


class MessageError(ValueError):
    """A device text frame that is not a valid message.

    ``reason`` is one line, safe to log and to echo back; ``type_name`` is the message's ``type``
    when it could be read (so the server can say which message it refused).
    """

    def __init__(self, reason: str, *, type_name: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.type_name = type_name


class UnknownMessageType(MessageError):
    """Well-formed JSON object whose ``type`` this server does not know; ``type_name`` is set."""


@dataclass(frozen=True, slots=True)
class AudioParams:
    """Uplink audio description from the device hello; defaults are the firmware's (spec §1.5)."""

    format: str = "opus"
    sample_rate: int = 16000
    channels: int = 1
    frame_duration: int = 60


@dataclass(frozen=True, slots=True)
class Hello:
    """Device hello. ``raw`` keeps the whole object (e.g. ``text_font``); treat the dicts as read-only."""

    version: int
    transport: str
    audio_params: AudioParams
    features: dict[str, Any]
    raw: dict[str, Any]
    session_id: str | None = None

    @property
    def supports_mcp(self) -> bool:
        return self.features.get("mcp") is True


@dataclass(frozen=True, slots=True)
class Listen:
    """``state`` start (with ``mode``), stop, or detect (with the wake word / chat ``text``)."""

    state: ListenState
    mode: ListenMode | None = None
    text: str | None = None
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class Abort:
    reason: str | None = None
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class Mcp:
    """JSON-RPC 2.0 object from the device's MCP server; see :func:`server.protocol.mcp.parse_mcp_payload`."""

    payload: dict[str, Any]
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class Goodbye:
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class Iot:
    """Legacy (firmware < 1.8.0) IoT descriptors/states, accepted and passed on unparsed."""

    raw: dict[str, Any] = field(default_factory=dict)
    session_id: str | None = None


DeviceMessage = Hello | Listen | Abort | Mcp | Goodbye | Ping | Iot


def _show(value: object, limit: int = 60) -> str:
    """repr() for error messages: one line (repr escapes newlines) and bounded in length."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: object) -> bool:
    # JSON true/false arrive as bool, which is an int subclass; never let them pass as numbers.
    return isinstance(value, int) and not isinstance(value, bool)


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity, which are not JSON and no device sends.
    raise ValueError(f"non-standard JSON constant {name}")


def _optional_str(obj: dict[str, Any], key: str, type_name: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise MessageError(f"{type_name}: {key} must be a string, got {_show(value)}", type_name=type_name)


def _choice(value: object, allowed: tuple[Any, ...], what: str, type_name: str) -> Any:
    # Membership test only after the type check: 16000.0 == 16000 and True == 1 in Python.
    if isinstance(value, bool) or not isinstance(value, type(allowed[0])) or value not in allowed:
        options = "/".join(str(a) for a in allowed)
        raise MessageError(f"{type_name}: {what} must be one of {options}, got {_show(value)}", type_name=type_name)
    return value


def _parse_audio_params(value: object) -> AudioParams:
    if value is None:
        return AudioParams()
    if not isinstance(value, dict):
        raise MessageError(f"hello: audio_params must be an object, got {_show(value)}", type_name="hello")
    defaults = AudioParams()
    fmt = value.get("format", defaults.format)
    if fmt != "opus":
        raise MessageError(f"hello: audio_params.format must be 'opus', got {_show(fmt)}", type_name="hello")
    return AudioParams(
        format=fmt,
        sample_rate=_choice(
            value.get("sample_rate", defaults.sample_rate), OPUS_SAMPLE_RATES, "audio_params.sample_rate", "hello"
        ),
        channels=_choice(value.get("channels", defaults.channels), (1, 2), "audio_params.channels", "hello"),
        frame_duration=_choice(
            value.get("frame_duration", defaults.frame_duration),
            FRAME_DURATIONS_MS,
            "audio_params.frame_duration",
            "hello",
        ),
    )


def _parse_hello(obj: dict[str, Any], session_id: str | None) -> Hello:
    version = obj.get("version")
    if version is None:
        version = 1  # the firmware default binary protocol
    elif not _is_int(version) or version < 0:
        raise MessageError(f"hello: version must be a non-negative integer, got {_show(version)}", type_name="hello")
    transport = _optional_str(obj, "transport", "hello")
    if transport is None:
        transport = "websocket"  # the only transport of this channel; MQTT devices say "udp"
    features = obj.get("features")
    if features is None:
        features = {}
    elif not isinstance(features, dict):
        raise MessageError(f"hello: features must be an object, got {_show(features)}", type_name="hello")
    return Hello(
        version=version,
        transport=transport,
        audio_params=_parse_audio_params(obj.get("audio_params")),
        features=features,
        raw=obj,
        session_id=session_id,
    )


def _parse_listen(obj: dict[str, Any], session_id: str | None) -> Listen:
    if "state" not in obj:
        raise MessageError("listen: missing state", type_name="listen")
    state = _choice(obj["state"], LISTEN_STATES, "state", "listen")
    mode = obj.get("mode")
    if mode is not None:
        mode = _choice(mode, LISTEN_MODES, "mode", "listen")
    return Listen(state=state, mode=mode, text=_optional_str(obj, "text", "listen"), session_id=session_id)


def _parse_mcp(obj: dict[str, Any], session_id: str | None) -> Mcp:
    payload = obj.get("payload")
    if not isinstance(payload, dict):
        raise MessageError(f"mcp: payload must be an object, got {_show(payload)}", type_name="mcp")
    return Mcp(payload=payload, session_id=session_id)


def _decode_json(text: str | bytes, max_chars: int) -> object:
    if isinstance(text, bytes | bytearray | memoryview):
        # A UTF-8 char is at most 4 bytes: refuse obvious oversize before spending time decoding.
        if len(text) > 4 * max_chars:
            raise MessageError(f"message of {len(text)} bytes exceeds {max_chars} characters")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MessageError(f"message is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    elif not isinstance(text, str):
        raise MessageError(f"message must be str or bytes, not {type(text).__name__}")
    if len(text) > max_chars:
        raise MessageError(f"message of {len(text)} characters exceeds {max_chars}")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        # Deeply nested arrays ([[[[...) blow the C scanner's recursion limit.
        raise MessageError("message is not JSON: nested too deeply") from None
    except ValueError as exc:
        # JSONDecodeError, the constant hook, and int() refusing > 4300 digits are all ValueErrors.
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MessageError(f"message is not JSON: {first_line}") from None


def parse_device_message(text: str | bytes, *, max_chars: int = MAX_MESSAGE_CHARS) -> DeviceMessage:
    """Parse one device → server text frame.

    Raises :class:`MessageError` (``UnknownMessageType`` for an unknown ``type``) and nothing else.
    ``session_id`` is never required: the device only echoes what the server gave it, and may
    send an empty string before the server hello.
    """
    obj = _decode_json(text, max_chars)
    if not isinstance(obj, dict):
        raise MessageError(f"message must be a JSON object, got {type(obj).__name__}")
    type_name = obj.get("type")
    if type_name is None:
        raise MessageError("message has no type")
    if not isinstance(type_name, str):
        raise MessageError(f"message type must be a string, got {_show(type_name)}")
    raw_session = obj.get("session_id")
    session_id = raw_session if isinstance(raw_session, str) else None

    if type_name == "hello":
        return _parse_hello(obj, session_id)
    if type_name == "listen":
        return _parse_listen(obj, session_id)
    if type_name == "abort":
        return Abort(reason=_optional_str(obj, "reason", "abort"), session_id=session_id)
    if type_name == "mcp":
        return _parse_mcp(obj, session_id)
    if type_name == "goodbye":
        return Goodbye(session_id=session_id)
    if type_name == "ping":
        return Ping(session_id=session_id)
    if type_name == "iot":
        return Iot(raw=obj, session_id=session_id)
    raise UnknownMessageType(f"unknown message type {_show(type_name)}", type_name=type_name)


# --- server → device -------------------------------------------------------------------------


def server_hello(
    session_id: str,
    sample_rate: int = DEFAULT_DOWNLINK_SAMPLE_RATE,
    frame_duration: int = DEFAULT_DOWNLINK_FRAME_DURATION,
    version: int = 1,
) -> dict[str, Any]:
    """Server hello describing the *downlink* (TTS) audio; the firmware reads only rate and duration.

    Unlike the Python reference server we do not copy the device's uplink params here: the reply
    states the rate TTS is really encoded at.
    """
    if sample_rate not in OPUS_SAMPLE_RATES or isinstance(sample_rate, bool):
        raise ValueError(f"sample_rate {sample_rate!r} is not an opus rate {OPUS_SAMPLE_RATES}")
    if frame_duration not in FRAME_DURATIONS_MS or isinstance(frame_duration, bool):
        raise ValueError(f"frame_duration {frame_duration!r} is not one of {FRAME_DURATIONS_MS}")
    return {
        "type": "hello",
        "version": version,
        # The firmware ignores a hello whose transport is not exactly "websocket".
        "transport": "websocket",
        "session_id": session_id,
        "audio_params": {
            "format": "opus",
            "sample_rate": int(sample_rate),
            "channels": 1,
            "frame_duration": int(frame_duration),
        },
    }


def stt(session_id: str, text: str) -> dict[str, Any]:
    """Recognised user speech; the device shows it as the user's bubble."""
    return {"type": "stt", "text": text, "session_id": session_id}


def llm_emotion(session_id: str, emotion: str, text: str | None = None) -> dict[str, Any]:
    """Face to show. Unknown emotions become ``neutral`` (the firmware has no face for them);
    ``text`` defaults to the emotion's emoji, as the Python reference server sends."""
    if emotion not in EMOTIONS:
        emotion = "neutral"
    return {
        "type": "llm",
        "text": EMOTIONS[emotion] if text is None else text,
        "emotion": emotion,
        "session_id": session_id,
    }


def tts_start(session_id: str) -> dict[str, Any]:
    return {"type": "tts", "state": "start", "session_id": session_id}


def tts_sentence_start(session_id: str, text: str) -> dict[str, Any]:
    """Subtitle for the audio that follows."""
    return {"type": "tts", "state": "sentence_start", "text": text, "session_id": session_id}


def tts_sentence_end(session_id: str, text: str) -> dict[str, Any]:
    """Sent by both reference servers; current firmware ignores it."""
    return {"type": "tts", "state": "sentence_end", "text": text, "session_id": session_id}


def tts_stop(session_id: str) -> dict[str, Any]:
    """Send only after the last audio frame has had time to play: the device flushes on it."""
    return {"type": "tts", "state": "stop", "session_id": session_id}


def mcp(session_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Envelope for a JSON-RPC object built with :mod:`server.protocol.mcp`."""
    return {"type": "mcp", "payload": payload, "session_id": session_id}


def alert(session_id: str, status: str, message: str, emotion: str) -> dict[str, Any]:
    """Alert box + vibration sound; the firmware ignores it unless all three strings are present."""
    return {"type": "alert", "status": status, "message": message, "emotion": emotion, "session_id": session_id}


def system_reboot(session_id: str) -> dict[str, Any]:
    """The only ``system`` command the firmware supports."""
    return {"type": "system", "command": "reboot", "session_id": session_id}


def goodbye(session_id: str) -> dict[str, Any]:
    return {"type": "goodbye", "session_id": session_id}


def pong(session_id: str, timestamp: int) -> dict[str, Any]:
    """Answer to a device ``ping`` (Python reference server behaviour; firmware never pings)."""
    return {"type": "pong", "timestamp": timestamp, "session_id": session_id}


def error(session_id: str, message: str) -> dict[str, Any]:
    """Report an error to the device.

    The firmware has no ``error`` message type and silently drops unknown types, so the error is
    sent as an ``alert`` with status ``"error"`` and the ``sad`` face: a real device shows it, and
    simulators/test pages recognise it by ``type == "alert" and status == "error"``.
    """
    return alert(session_id, "error", message, "sad")
