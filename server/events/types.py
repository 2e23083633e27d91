"""The three topics of the event bus (S16) and their on-disk form for the spool."""

from __future__ import annotations

import base64
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from server.storage.errors import InvalidInput
from server.storage.models import MAX_DEVICE_ID, MAX_SESSION_ID, NewMessage, check_id

TOPIC_SESSION_START = "session-start"
TOPIC_ADD_MESSAGE = "add-message"
TOPIC_SESSION_END = "session-end"
TOPIC_SAVE_AUDIO = "save-audio"


@dataclass(frozen=True, slots=True)
class AddMessage:
    topic: ClassVar[str] = TOPIC_ADD_MESSAGE
    message: NewMessage

    @property
    def session_id(self) -> str:
        return self.message.session_id

    def validate(self) -> AddMessage:
        self.message.validate()
        return self


@dataclass(frozen=True, slots=True)
class SessionStart:
    """A device connected: its session row (with agent and connection metadata) comes first."""

    topic: ClassVar[str] = TOPIC_SESSION_START
    session_id: str
    device_id: str
    agent_id: str | None = None
    metadata: dict[str, Any] | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def validate(self) -> SessionStart:
        check_id("session_id", self.session_id, MAX_SESSION_ID)
        check_id("device_id", self.device_id, MAX_DEVICE_ID)
        return self


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """The connection closed (status → ended) or the memory was reset (status → reset)."""

    topic: ClassVar[str] = TOPIC_SESSION_END
    session_id: str
    device_id: str
    ended_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    reset: bool = False

    def validate(self) -> SessionEnd:
        check_id("session_id", self.session_id, MAX_SESSION_ID)
        check_id("device_id", self.device_id, MAX_DEVICE_ID)
        return self


@dataclass(frozen=True, slots=True)
class SaveAudio:
    """One turn of opus packets (the user's speech or one TTS reply) to store as an Ogg Opus file.

    ``file_id`` and ``created_at`` are fixed when the event is made, so a retried upload writes the
    same object and row instead of a second copy.
    """

    topic: ClassVar[str] = TOPIC_SAVE_AUDIO
    session_id: str
    device_id: str
    source: Literal["user", "tts", "asr"]
    packets: tuple[bytes, ...]
    sample_rate: int
    channels: int = 1
    message_id: str | None = None
    transcription: str | None = None
    file_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def validate(self) -> SaveAudio:
        check_id("session_id", self.session_id, MAX_SESSION_ID)
        check_id("device_id", self.device_id, MAX_DEVICE_ID)
        if self.source not in ("user", "tts", "asr"):
            raise InvalidInput(f"audio source must be user, tts or asr, got {self.source!r}")
        if not self.packets:
            raise InvalidInput("empty audio: no opus packets")
        if self.sample_rate not in (8000, 12000, 16000, 24000, 48000):
            raise InvalidInput(f"sample_rate must be an opus rate (8000…48000), got {self.sample_rate}")
        if self.channels not in (1, 2):
            raise InvalidInput(f"channels must be 1 or 2, got {self.channels}")
        return self


Event = SessionStart | AddMessage | SessionEnd | SaveAudio


def _stamp(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_stamp(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def to_record(event: Event) -> dict[str, Any]:
    """A JSON-safe dict (the spool's file format)."""
    if isinstance(event, AddMessage):
        body = asdict(event.message)
        body["created_at"] = _stamp(event.message.created_at)
        return {"topic": event.topic, "message": body}
    if isinstance(event, SessionStart):
        return {
            "topic": event.topic,
            "session_id": event.session_id,
            "device_id": event.device_id,
            "agent_id": event.agent_id,
            "metadata": event.metadata,
            "started_at": _stamp(event.started_at),
        }
    if isinstance(event, SessionEnd):
        return {
            "topic": event.topic,
            "session_id": event.session_id,
            "device_id": event.device_id,
            "ended_at": _stamp(event.ended_at),
            "reset": event.reset,
        }
    body = {name: getattr(event, name) for name in SaveAudio.__dataclass_fields__ if name != "topic"}
    body["packets"] = [base64.b64encode(p).decode() for p in event.packets]
    body["created_at"] = _stamp(event.created_at)
    return {"topic": event.topic, **body}


def from_record(record: dict[str, Any]) -> Event:
    """Inverse of ``to_record``; raises ValueError on anything malformed."""
    try:
        topic = record["topic"]
        if topic == TOPIC_ADD_MESSAGE:
            body = dict(record["message"])
            body["created_at"] = _parse_stamp(body.get("created_at"))
            return AddMessage(NewMessage(**body))
        if topic == TOPIC_SESSION_START:
            return SessionStart(
                record["session_id"],
                record["device_id"],
                record.get("agent_id"),
                record.get("metadata"),
                _parse_stamp(record["started_at"]) or datetime.now(UTC),
            )
        if topic == TOPIC_SESSION_END:
            return SessionEnd(
                record["session_id"],
                record["device_id"],
                _parse_stamp(record["ended_at"]) or datetime.now(UTC),
                bool(record.get("reset", False)),
            )
        if topic == TOPIC_SAVE_AUDIO:
            body = {k: v for k, v in record.items() if k != "topic"}
            body["packets"] = tuple(base64.b64decode(p, validate=True) for p in body["packets"])
            body["created_at"] = _parse_stamp(body["created_at"])
            return SaveAudio(**body)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed event record: {exc}") from exc
    raise ValueError(f"unknown event topic {record.get('topic')!r}")
