"""Server → device JSON text frames, parsed the way the firmware reads them (protocol.md §1.2, §1.4).

``server.protocol.messages`` builds these messages and parses the *device's*; this is the missing other
direction.  The firmware is lenient about unknown types (it ignores them) but needs the fields it uses,
so a message it would have to skip (``stt`` without text, ``alert`` missing one of its three strings…)
raises :class:`ServerMessageError`, which the client reports and then ignores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from server.protocol.messages import (
    DEFAULT_DOWNLINK_FRAME_DURATION,
    DEFAULT_DOWNLINK_SAMPLE_RATE,
    FRAME_DURATIONS_MS,
    MAX_MESSAGE_CHARS,
    OPUS_SAMPLE_RATES,
)

__all__ = [
    "ServerAlert",
    "ServerGoodbye",
    "ServerHello",
    "ServerLlm",
    "ServerMcp",
    "ServerMessage",
    "ServerMessageError",
    "ServerOther",
    "ServerStt",
    "ServerSystem",
    "ServerTts",
    "parse_server_message",
]

TtsStateName = Literal["start", "stop", "sentence_start", "sentence_end"]
_TTS_STATES: tuple[TtsStateName, ...] = ("start", "stop", "sentence_start", "sentence_end")
# Types servers send that a current device knowingly does nothing with (``speak_request``, ``notify`` and
# ``text``: the Go server of hackers365, which the firmware ignores silently).
QUIET_TYPES = frozenset({"pong", "custom", "iot", "server", "speak_request", "notify", "text"})


class ServerMessageError(ValueError):
    """A server text frame the firmware could not use; ``str()`` is one line."""


@dataclass(frozen=True, slots=True)
class ServerHello:
    transport: str
    session_id: str
    sample_rate: int = DEFAULT_DOWNLINK_SAMPLE_RATE
    frame_duration: int = DEFAULT_DOWNLINK_FRAME_DURATION
    version: int | None = None  # the binary protocol version the server says it speaks (None: it does not say)
    problem: str | None = None  # audio_params the device cannot use: the defaults apply (the firmware takes any)


@dataclass(frozen=True, slots=True)
class ServerStt:
    text: str


@dataclass(frozen=True, slots=True)
class ServerLlm:
    emotion: str
    text: str = ""


@dataclass(frozen=True, slots=True)
class ServerTts:
    state: TtsStateName
    text: str | None = None


@dataclass(frozen=True, slots=True)
class ServerMcp:
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ServerAlert:
    status: str
    message: str
    emotion: str


@dataclass(frozen=True, slots=True)
class ServerSystem:
    command: str


@dataclass(frozen=True, slots=True)
class ServerGoodbye:
    pass


@dataclass(frozen=True, slots=True)
class ServerOther:
    """A well-formed message of a type the device does not act on (``pong``, ``custom``, unknown…)."""

    type: str
    raw: dict[str, Any]


ServerMessage = (
    ServerHello | ServerStt | ServerLlm | ServerTts | ServerMcp | ServerAlert | ServerSystem | ServerGoodbye
    | ServerOther
)  # fmt: skip


def _show(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _string(obj: dict[str, Any], key: str, type_name: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ServerMessageError(f"{type_name}: {key} must be a string, got {_show(value)}")
    return value


def _audio_param(params: dict[str, Any], key: str, allowed: tuple[int, ...], default: int) -> int:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise ServerMessageError(f"hello: audio_params.{key} must be one of {allowed}, got {_show(value)}")
    return value


def _parse_hello(obj: dict[str, Any]) -> ServerHello:
    transport = obj.get("transport")
    session_id = obj.get("session_id")
    params = obj.get("audio_params")
    sample_rate, frame_duration = DEFAULT_DOWNLINK_SAMPLE_RATE, DEFAULT_DOWNLINK_FRAME_DURATION
    problem = None
    try:
        if params is not None:
            if not isinstance(params, dict):
                raise ServerMessageError(f"hello: audio_params must be an object, got {_show(params)}")
            sample_rate = _audio_param(params, "sample_rate", OPUS_SAMPLE_RATES, sample_rate)
            frame_duration = _audio_param(params, "frame_duration", FRAME_DURATIONS_MS, frame_duration)
    except ServerMessageError as exc:
        # the hello still opens the channel, as on the firmware; the audio is read as the defaults describe
        sample_rate, frame_duration = DEFAULT_DOWNLINK_SAMPLE_RATE, DEFAULT_DOWNLINK_FRAME_DURATION
        problem = f"{exc}; using {sample_rate} Hz, {frame_duration} ms"
    version = obj.get("version")
    return ServerHello(
        transport=transport if isinstance(transport, str) else "",
        session_id=session_id if isinstance(session_id, str) else "",
        sample_rate=sample_rate,
        frame_duration=frame_duration,
        version=version if isinstance(version, int) and not isinstance(version, bool) else None,
        problem=problem,
    )


def _parse_tts(obj: dict[str, Any]) -> ServerTts:
    state = obj.get("state")
    if state not in _TTS_STATES:
        raise ServerMessageError(f"tts: state must be one of {'/'.join(_TTS_STATES)}, got {_show(state)}")
    text = obj.get("text", "" if state == "sentence_start" else None)  # omitempty: an empty sentence has no text
    if state == "sentence_start" and not isinstance(text, str):
        raise ServerMessageError(f"tts sentence_start: text must be a string, got {_show(text)}")
    return ServerTts(state=state, text=text if isinstance(text, str) else None)


def parse_server_message(text: str | bytes) -> ServerMessage:
    """Parse one server text frame; raises only :class:`ServerMessageError`."""
    if isinstance(text, bytes | bytearray | memoryview):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ServerMessageError(f"message is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if len(text) > MAX_MESSAGE_CHARS:
        raise ServerMessageError(f"message of {len(text)} characters exceeds {MAX_MESSAGE_CHARS}")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ServerMessageError(f"message is not JSON: {first_line}") from None
    if not isinstance(obj, dict):
        raise ServerMessageError(f"message must be a JSON object, got {type(obj).__name__}")
    type_name = obj.get("type")
    if not isinstance(type_name, str):
        raise ServerMessageError(f"message type must be a string, got {_show(type_name)}")
    match type_name:
        case "hello":
            return _parse_hello(obj)
        case "stt":
            return ServerStt(_string(obj, "text", "stt"))
        case "llm":
            # a Go server leaves out empty fields (omitempty); the firmware uses an emotion only when there is one
            emotion, text_value = obj.get("emotion", ""), obj.get("text", "")
            if not isinstance(emotion, str):
                raise ServerMessageError(f"llm: emotion must be a string, got {_show(emotion)}")
            return ServerLlm(emotion, text_value if isinstance(text_value, str) else "")
        case "tts":
            return _parse_tts(obj)
        case "mcp":
            payload = obj.get("payload")
            if not isinstance(payload, dict):
                raise ServerMessageError(f"mcp: payload must be an object, got {_show(payload)}")
            return ServerMcp(payload)
        case "alert":
            # The firmware shows an alert only when all three strings are present.
            return ServerAlert(_string(obj, "status", "alert"), _string(obj, "message", "alert"),
                               _string(obj, "emotion", "alert"))  # fmt: skip
        case "system":
            return ServerSystem(_string(obj, "command", "system"))
        case "goodbye":
            return ServerGoodbye()
        case _:
            return ServerOther(type_name, obj)
