"""Sessions and ids for Redis history, derived only from the data so that every run derives the same ones.

The Go server's sorted set holds one device's whole dialogue with no session in it. PostgreSQL wants
sessions, so the history is cut where the device was silent for longer than ``gap`` (default 30 minutes):
that is where one conversation ended and a later one began. A session's id comes from its device and its
first message's time; a message's id from its device, its time and its bytes — so a re-run finds the rows
it wrote before and adds nothing.
"""

from __future__ import annotations

import hashlib
import re

DEFAULT_GAP_NS = 30 * 60 * 10**9
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")


def parse_gap(text: str) -> int:
    """``"30"`` / ``"30m"`` → 30 minutes, ``"90s"``, ``"2h"``; in nanoseconds, > 0."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"expected a duration such as 30m, 90s or 2h, got {text!r}")
    value = float(match[1]) * {"s": 1, "m": 60, "h": 3600, "": 60}[match[2]]
    if value <= 0:
        raise ValueError("must be longer than 0")
    return int(value * 10**9)


def _digest(data: bytes, size: int) -> str:
    return hashlib.blake2b(data, digest_size=size).hexdigest()


def device_tag(device_id: str) -> str:
    """16 hex digits standing for a device id (ids can be 128 characters; session ids only 64)."""
    return _digest(device_id.encode("utf-8"), 8)


def message_id(identity: bytes, time_ms: int) -> str:
    """32 hex digits like the store's own ids: 48 bits of milliseconds (time-ordered, so the index stays
    append-mostly), then 80 bits of a hash of what identifies the record in Redis."""
    return f"{time_ms & 0xFFFF_FFFF_FFFF:012x}{_digest(identity, 10)}"


def list_session_id(key: bytes) -> str:
    """One session per list key (the list layout names its session; the key is kept in the metadata)."""
    return f"redis-list-{_digest(key, 12)}"


class SessionSplitter:
    """Feed one device's message times (ns) in ascending order; get each message's session id."""

    __slots__ = ("_current", "_last", "gap_ns", "tag")

    def __init__(self, device_id: str, gap_ns: int = DEFAULT_GAP_NS) -> None:
        self.tag = device_tag(device_id)
        self.gap_ns = gap_ns
        self._current: str | None = None
        self._last = 0

    def session_for(self, time_ns: int) -> str:
        if self._current is None or time_ns - self._last > self.gap_ns:
            self._current = f"redis-{self.tag}-{time_ns}"
        self._last = time_ns
        return self._current
