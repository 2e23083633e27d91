"""One session as the conversation view shows it: bubbles in order, idle-gap dividers, tool calls paired
with their results, multimodal parts, audio per message, and search within the session."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from server.storage.conversation_store import ConversationStore
from server.storage.models import AudioFile, SessionInfo, StoredMessage

IDLE_GAP = timedelta(minutes=2)
COLLAPSE_JSON_CHARS = 160  # longer tool arguments / results start collapsed


@dataclass(frozen=True, slots=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str  # pretty JSON when it parses
    result: str | None  # the paired tool message's content, pretty JSON when it parses
    result_message_id: str | None

    @property
    def collapsed(self) -> bool:
        return len(self.arguments) + len(self.result or "") > COLLAPSE_JSON_CHARS


@dataclass(frozen=True, slots=True)
class Bubble:
    message: StoredMessage
    tool_calls: tuple[ToolCall, ...] = ()
    parts: tuple[str, ...] = ()  # multimodal parts other than text, one line each
    audio: AudioFile | None = None

    @property
    def role(self) -> str:
        return self.message.role

    @property
    def text(self) -> str:
        return self.message.content

    def searchable(self) -> str:
        extra = " ".join(f"{c.name} {c.arguments} {c.result or ''}" for c in self.tool_calls)
        return f"{self.message.content} {' '.join(self.parts)} {extra}".casefold()


@dataclass(frozen=True, slots=True)
class Divider:
    gap: timedelta
    at: datetime


Item = Bubble | Divider


@dataclass
class Conversation:
    info: SessionInfo
    items: list[Item]
    system_prompt: str | None
    audio: list[AudioFile] = field(default_factory=list)

    @property
    def bubbles(self) -> list[Bubble]:
        return [i for i in self.items if isinstance(i, Bubble)]

    def find(self, text: str) -> list[int]:
        """Indices into ``items`` of bubbles containing ``text`` (case-insensitive; Chinese or English)."""
        needle = text.strip().casefold()
        if not needle:
            return []
        return [n for n, item in enumerate(self.items) if isinstance(item, Bubble) and needle in item.searchable()]

    def index_of_message(self, message_id: str) -> int | None:
        for n, item in enumerate(self.items):
            if isinstance(item, Bubble) and item.message.message_id == message_id:
                return n
        return None


def pretty_json(text: str) -> str:
    try:
        return json.dumps(json.loads(text), ensure_ascii=False, indent=2)
    except (ValueError, TypeError):
        return text


def _parts(multi: list[dict[str, Any]] | None) -> tuple[str, ...]:
    out = []
    for part in multi or []:
        kind = str(part.get("type", "part"))
        if kind == "text":
            continue
        value = part.get(kind)
        if isinstance(value, dict):
            value = value.get("url") or value.get("data") or json.dumps(value, ensure_ascii=False)
        out.append(f"[{kind}] {value if value is not None else json.dumps(part, ensure_ascii=False)}")
    return tuple(out)


def build_items(messages: list[StoredMessage], audio: list[AudioFile], gap: timedelta = IDLE_GAP) -> list[Item]:
    by_message = {a.message_id: a for a in audio if a.message_id}
    results = {m.tool_call_id: m for m in messages if m.role == "tool" and m.tool_call_id}
    paired: set[str] = set()
    items: list[Item] = []
    previous: StoredMessage | None = None
    for msg in messages:
        if msg.role == "tool" and msg.tool_call_id in paired:
            continue
        if previous is not None and msg.created_at - previous.created_at >= gap:
            items.append(Divider(msg.created_at - previous.created_at, msg.created_at))
        calls = []
        for call in msg.tool_calls or []:
            call_id = str(call.get("id", ""))
            fn = call.get("function") or {}
            result = results.get(call_id)
            if result is not None:
                paired.add(call_id)
            calls.append(
                ToolCall(
                    call_id=call_id,
                    name=str(fn.get("name", call.get("name", "?"))),
                    arguments=pretty_json(str(fn.get("arguments", call.get("arguments", "")))),
                    result=pretty_json(result.content) if result else None,
                    result_message_id=result.message_id if result else None,
                )
            )
        items.append(Bubble(msg, tuple(calls), _parts(msg.multi_content), by_message.get(msg.message_id)))
        previous = msg
    return items


async def load_conversation(store: ConversationStore, session_id: str) -> Conversation:
    info = await store.get_session(session_id)
    messages = await store.timeline(session_id)
    audio = await store.list_audio_files(session_id=session_id, limit=10_000)
    prompt = await store.get_system_prompt(info.device_id)
    return Conversation(info, build_items(messages, audio), prompt, audio)
