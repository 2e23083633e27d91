"""The memory-provider interface (S7) and the message shape it speaks (eino ``schema.Message``).

A provider is addressed by a :class:`MemoryKey` — the design's string ``"{device_id}:{session_id}"``.
Device ids are MAC addresses full of colons, so the string is split at the *last* colon (the Go
reference did the same, then mixed agent and device ids into it; we keep the two parts apart).

Every provider implements the same contract, checked by ``tests/integration/test_memory_providers.py``:

* ``get_messages(key, n)`` — the last ``n`` messages still in context, oldest → newest;
* ``get_context(key, max_tokens)`` — extra text for the system prompt, often ``""``;
* ``search(key, query, top_k, time_range_days)`` — lines ``[YYYY-MM-DD HH:MM:SS] role: content`` (server
  local time), newest first, over the device's history. The query is the whole user utterance, so it is
  reduced to its distinctive terms (:func:`memory_terms`) and a message matching *any* of them is a hit;
  ``%`` and ``_`` are ordinary characters. The utterance being answered — a user message whose text is the
  query itself, which the add-message event has usually stored already — is not returned as a memory of
  itself;
* ``reset(key)`` — forget: afterwards neither ``get_messages``, ``get_context`` nor ``search`` return
  anything said before the reset, for that device;
* ``flush(key)`` on session end, ``close()`` at shutdown.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from server.storage.errors import InvalidInput
from server.storage.models import MAX_DEVICE_ID, MAX_SESSION_ID, NewMessage, StoredMessage, check_id

# At most this many terms of an utterance are searched (each is one query in PostgreSQL).
MAX_QUERY_TERMS = 4
MAX_TERM_CHARS = 100  # as server.storage.search

# Words that say nothing about *what* was talked about; searching them would match everything.
# fmt: off
_STOP_WORDS = frozenset({
    "a", "an", "and", "are", "about", "any", "can", "could", "did", "do", "does", "for", "from", "had", "has",
    "have", "how", "i", "in", "is", "it", "its", "me", "my", "of", "on", "or", "our", "please", "remember", "said",
    "say", "tell", "that", "the", "their", "them", "then", "there", "these", "this", "those", "to", "told", "was",
    "we", "were", "what", "when", "where", "which", "who", "why", "will", "with", "would", "you", "your",
})
# fmt: on
# Separators: whitespace, ASCII and CJK punctuation. Deliberately NOT % _ - / # @ + . : ' — they belong
# to terms ("100%", "wifi_ssid", "v1.6", "12:30"); . : ' are only stripped from a term's ends.
_SEPARATORS = re.compile(r"[\s,;!?\"()\[\]{}<>，。！？、；：“”‘’（）《》【】「」『』〈〉…—～·]+")
_EDGE_PUNCTUATION = ".:'`~*"
_CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff]")


@dataclass(frozen=True, slots=True)
class MemoryKey:
    """Which conversation a memory call is about: ``"{device_id}:{session_id}"``."""

    device_id: str
    session_id: str

    def __post_init__(self) -> None:
        check_id("memory key device_id", self.device_id, MAX_DEVICE_ID)
        check_id("memory key session_id", self.session_id, MAX_SESSION_ID)
        if ":" in self.session_id:
            raise InvalidInput(
                f"memory key: session_id {self.session_id!r} contains ':'; the string form splits at the last "
                "colon, so it could not be read back"
            )

    @classmethod
    def parse(cls, key: str) -> MemoryKey:
        """``"aa:bb:cc:dd:ee:ff:s1"`` → device ``aa:bb:cc:dd:ee:ff``, session ``s1`` (split at the LAST colon)."""
        if not isinstance(key, str):
            raise InvalidInput(f"memory key must be a string, got {type(key).__name__}")
        device_id, sep, session_id = key.rpartition(":")
        if not sep:
            raise InvalidInput(f"memory key {key!r} has no ':'; expected '{{device_id}}:{{session_id}}'")
        if not device_id or not session_id:
            raise InvalidInput(f"memory key {key!r} has an empty part; expected '{{device_id}}:{{session_id}}'")
        return cls(device_id, session_id)

    def __str__(self) -> str:
        return f"{self.device_id}:{self.session_id}"


KeyLike = MemoryKey | str


def as_key(key: KeyLike) -> MemoryKey:
    return key if isinstance(key, MemoryKey) else MemoryKey.parse(key)


@dataclass(frozen=True, slots=True)
class MemoryMessage:
    """One chat message as the LLM sees it; ``to_eino()`` is the JSON the Go server stores in Redis."""

    role: str
    content: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    multi_content: list[dict[str, Any]] | None = None
    created_at: datetime | None = None
    message_id: str | None = None

    def to_eino(self) -> dict[str, Any]:
        """eino ``schema.Message`` JSON: ``role`` and ``content`` always (Go has no omitempty on them), the rest
        only when set, in the Go struct's field order. Time and id are not part of that shape."""
        out: dict[str, Any] = {"role": self.role, "content": self.content or ""}
        if self.multi_content:
            out["multi_content"] = self.multi_content
        if self.name:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        return out

    @classmethod
    def from_eino(
        cls, data: Mapping[str, Any], *, created_at: datetime | None = None, message_id: str | None = None
    ) -> MemoryMessage:
        """Read eino JSON (as the Go server wrote it). Fields this shape does not model — ``reasoning_content``,
        ``tool_name``, ``response_meta``, ``extra`` … — are dropped."""
        if not isinstance(data, Mapping):
            raise InvalidInput(f"an eino message must be a JSON object, got {type(data).__name__}")
        role = data.get("role")
        if not isinstance(role, str) or not role:
            raise InvalidInput(f"an eino message needs a role, got {role!r}")
        content = data.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise InvalidInput(f"eino message content must be a string, got {type(content).__name__}")
        tool_calls = data.get("tool_calls") or None
        multi_content = data.get("multi_content") or None
        for name, value in (("tool_calls", tool_calls), ("multi_content", multi_content)):
            if value is not None and not isinstance(value, list):
                raise InvalidInput(f"eino message {name} must be a list, got {type(value).__name__}")
        return cls(
            role=role,
            content=content,
            tool_calls=tool_calls,
            tool_call_id=data.get("tool_call_id") or None,
            name=data.get("name") or None,
            multi_content=multi_content,
            created_at=created_at,
            message_id=message_id,
        )

    @classmethod
    def from_message(cls, message: NewMessage | StoredMessage) -> MemoryMessage:
        """From a message to store or a stored one; the history has no "name" column, it rides in metadata."""
        name = (message.metadata or {}).get("name")
        return cls(
            role=message.role,
            content=message.content,
            tool_calls=message.tool_calls,
            tool_call_id=message.tool_call_id,
            name=name if isinstance(name, str) else None,
            multi_content=message.multi_content,
            created_at=message.created_at,
            message_id=message.message_id,
        )


def memory_terms(query: str) -> list[str]:
    """The distinctive terms of an utterance, longest first, at most :data:`MAX_QUERY_TERMS`.

    Split at whitespace and punctuation; drop stop words and terms too short to mean anything (under two
    characters for CJK, under three otherwise). Chinese has no spaces, so a Chinese clause stays one term and
    only matches text that contains the whole clause — proper word segmentation would need a dictionary.
    """
    if not isinstance(query, str):
        return []
    seen: set[str] = set()
    terms: list[str] = []
    for raw in _SEPARATORS.split(query):
        term = raw.strip(_EDGE_PUNCTUATION)[:MAX_TERM_CHARS]
        folded = term.casefold()
        if not term or folded in seen or folded in _STOP_WORDS or "\x00" in term:
            continue
        if len(term) < (2 if _CJK.search(term) else 3):
            continue
        seen.add(folded)
        terms.append(term)
    terms.sort(key=len, reverse=True)  # stable: equal lengths keep the utterance's order
    return terms[:MAX_QUERY_TERMS]


def is_echo(role: str, content: str, query: str) -> bool:
    """The utterance being answered, found in the store: not a memory of itself."""
    return role == "user" and content.strip() == query.strip()


def format_memory_line(created_at: datetime, role: str, content: str) -> str:
    """``[YYYY-MM-DD HH:MM:SS] role: content`` in server local time, on one line."""
    stamp = created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    text = " ".join(content.split())
    return f"[{stamp}] {role}: {text}"


class MemoryProvider(ABC):
    """Conversation memory behind one interface; ``name`` is what ``memory.provider`` selects."""

    name: ClassVar[str]
    # True: the provider is a separate store (redis) that the event handler must feed with every message.
    # False: it reads the conversation history that is written anyway (postgres), or keeps nothing.
    keeps_own_copy: ClassVar[bool] = False

    @abstractmethod
    async def add_message(self, key: KeyLike, message: MemoryMessage) -> None: ...

    async def add_messages(self, key: KeyLike, messages: Sequence[MemoryMessage]) -> None:
        for message in messages:
            await self.add_message(key, message)

    async def add_new_messages(self, messages: Sequence[NewMessage]) -> None:
        """Store history rows (as the event bus carries them); runs of one conversation go in one call and the
        overall order is kept."""
        runs: list[tuple[MemoryKey, list[MemoryMessage]]] = []
        for message in messages:
            key = MemoryKey(message.device_id, message.session_id)
            if not runs or runs[-1][0] != key:
                runs.append((key, []))
            runs[-1][1].append(MemoryMessage.from_message(message))
        for key, run in runs:
            await self.add_messages(key, run)

    @abstractmethod
    async def get_messages(self, key: KeyLike, n: int) -> list[MemoryMessage]:
        """The last ``n`` messages in context, oldest → newest."""

    @abstractmethod
    async def get_context(self, key: KeyLike, max_tokens: int = 500) -> str:
        """Text to add to the system prompt (may be ``""``)."""

    @abstractmethod
    async def search(self, key: KeyLike, query: str, top_k: int = 10, time_range_days: int | None = None) -> list[str]:
        """Remembered lines related to ``query``, newest first; ``time_range_days`` None → the provider's
        default window, 0 → no time limit."""

    async def flush(self, key: KeyLike) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Persist anything buffered for the conversation (session end)."""

    @abstractmethod
    async def reset(self, key: KeyLike) -> None:
        """Forget the device's remembered conversation."""

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Release connections the provider owns."""
