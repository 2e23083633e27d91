"""Copyable links to sessions and messages, and parsing what ``--open`` is given."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

SCHEME = "xiaozhi://"


@dataclass(frozen=True, slots=True)
class Target:
    session_id: str
    message_id: str | None = None


def session_link(session_id: str) -> str:
    return f"{SCHEME}session/{quote(session_id, safe='')}"


def message_link(session_id: str, message_id: str) -> str:
    return f"{session_link(session_id)}#{quote(message_id, safe='')}"


def parse_target(text: str) -> Target:
    """``session/<id>``, ``session/<id>#<message>`` or the same behind ``xiaozhi://``."""
    raw = text.strip()
    if raw.startswith(SCHEME):
        raw = raw[len(SCHEME) :]
    kind, _, rest = raw.partition("/")
    if kind != "session" or not rest:
        raise ValueError(f"expected session/<id> or {SCHEME}session/<id>, got {text!r}")
    session, _, message = rest.partition("#")
    if not session:
        raise ValueError(f"no session id in {text!r}")
    return Target(unquote(session), unquote(message) or None)
