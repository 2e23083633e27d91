"""The "redis" memory provider: the layout the Go server really writes (upstream-storage §3.9).

* dialogue: sorted set ``<prefix>:llm:<device_id>``; score = insert time in Unix nanoseconds; member = the
  message's eino ``schema.Message`` JSON — no time or id in it, the score is the only time;
* system prompt: string ``<prefix>:llm:system:<device_id>``.

Keyed by DEVICE id: the session part of a :class:`MemoryKey` is ignored, which is what carries the context
across reconnects (and what lets a Go server and this one share the data).

Decisions:

* **Identical messages are both kept.** ZSET members are unique, and the Go server ``ZADD``s the bare JSON,
  so a second "ok" only moves the first one's score — one message is lost and the order changes. Here a
  member that already exists gets trailing spaces appended until it is unique. JSON ignores trailing
  whitespace (Go's ``json.Unmarshal`` and Python's ``json.loads`` both accept it), so the shape the Go
  server reads is unchanged and no extra field is needed.
* **Scores strictly increase.** A score is a double: at today's Unix nanoseconds its resolution is 256 ns,
  so a batch's messages, or two servers' clocks, could tie or go backwards. Each new member gets
  ``max(now, newest score + 1 µs)``, then the next ``+ 1 µs``; the order read back is the order written.
* One Lua script adds a batch, keeps it unique, assigns scores and trims to ``max_messages`` (oldest go
  first) — atomic and one round trip.
* ``search`` reads the newest members within the time window and matches the query's terms as
  case-insensitive substrings in Python; no pattern ever reaches the server, so ``%``, ``_``, ``*`` and
  ``?`` are ordinary characters.
* ``reset`` deletes the dialogue; the system prompt is configuration and stays.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.memory.base import (
    KeyLike,
    MemoryKey,
    MemoryMessage,
    MemoryProvider,
    as_key,
    format_memory_line,
    is_echo,
    memory_terms,
)
from server.storage.errors import InvalidInput, StorageError, StorageUnavailable

log = logging.getLogger(__name__)

SCORE_STEP_NS = 1000  # > 256 ns, the spacing of doubles near 1.8e18

# KEYS[1] = dialogue ZSET; ARGV[1] = now (Unix ns), ARGV[2] = max_messages, ARGV[3..] = member JSON.
# Returns the last score written. Scores are formatted with %.0f: Lua's default number→string is %.14g,
# which would round nanoseconds to ten microseconds.
_ADD_SCRIPT = """
local key = KEYS[1]
local step = STEP
local score = tonumber(ARGV[1])
local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
if newest[2] then
  local last = tonumber(newest[2])
  if score < last + step then score = last + step end
end
for i = 3, #ARGV do
  local member = ARGV[i]
  while redis.call('ZSCORE', key, member) do
    member = member .. ' '
  end
  redis.call('ZADD', key, string.format('%.0f', score), member)
  score = score + step
end
local keep = tonumber(ARGV[2])
if keep > 0 then
  redis.call('ZREMRANGEBYRANK', key, 0, -(keep + 1))
end
return string.format('%.0f', score - step)
""".replace("STEP", str(SCORE_STEP_NS))


def normalise_prefix(key_prefix: str) -> str:
    """``"xiaozhi"`` and ``"xiaozhi:"`` both give ``"xiaozhi:"`` (never a double colon); ``""`` gives ``""``."""
    prefix = key_prefix.rstrip(":")
    return f"{prefix}:" if prefix else ""


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _time(score_ns: float) -> datetime:
    return datetime.fromtimestamp(score_ns / 1e9, UTC)


class RedisMemory(MemoryProvider):
    """Memory in Redis, compatible with the Go server's ``llm_memory`` keys.

    ``owns_client``: close the client in :meth:`close` (the factory sets it for clients it created).
    """

    name: ClassVar[str] = "redis"
    keeps_own_copy: ClassVar[bool] = True

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        key_prefix: str = "xiaozhi",
        max_messages: int = 1000,
        search_days: int = 180,
        owns_client: bool = False,
    ) -> None:
        if max_messages < 1:
            raise InvalidInput(f"max_messages must be >= 1, got {max_messages}")
        if search_days < 0:
            raise InvalidInput(f"search_days must be >= 0 (0 = no limit), got {search_days}")
        self.search_days = search_days
        self.client = client
        self.prefix = normalise_prefix(key_prefix)
        self.max_messages = max_messages
        self.owns_client = owns_client
        self._add = client.register_script(_ADD_SCRIPT)

    # ---- keys -----------------------------------------------------------------------------------

    def dialogue_key(self, device_id: str) -> str:
        return f"{self.prefix}llm:{device_id}"

    def system_prompt_key(self, device_id: str) -> str:
        return f"{self.prefix}llm:system:{device_id}"

    @contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StorageUnavailable(f"Redis is unreachable ({key}): {exc}") from None
        except ResponseError as exc:
            if "WRONGTYPE" in str(exc):
                raise StorageError(f"Redis key {key} is not a sorted set of messages; it holds another type") from None
            raise

    # ---- messages -------------------------------------------------------------------------------

    async def add_message(self, key: KeyLike, message: MemoryMessage) -> None:
        await self.add_messages(key, [message])

    async def add_messages(self, key: KeyLike, messages: Sequence[MemoryMessage]) -> None:
        key = as_key(key)
        if not messages:
            return
        members = [json.dumps(m.to_eino(), ensure_ascii=False, separators=(",", ":")) for m in messages]
        zkey = self.dialogue_key(key.device_id)
        with self._errors(zkey):
            await self._add(keys=[zkey], args=[time.time_ns(), self.max_messages, *members])

    async def get_messages(self, key: KeyLike, n: int) -> list[MemoryMessage]:
        key = as_key(key)
        if n <= 0:
            return []
        zkey = self.dialogue_key(key.device_id)
        fetch = n
        while True:  # unreadable members are skipped, and as many older ones read in their place
            with self._errors(zkey):
                rows = await self.client.zrange(zkey, -fetch, -1, withscores=True)
            got = [m for m in (self._decode(zkey, member, score) for member, score in rows) if m is not None]
            if len(got) >= n or len(rows) < fetch:
                return got[-n:]
            fetch += n - len(got)

    @staticmethod
    def _decode(zkey: str, member: bytes | str, score: float) -> MemoryMessage | None:
        try:
            data: Any = json.loads(_text(member))
            return MemoryMessage.from_eino(data, created_at=_time(score))
        except (ValueError, InvalidInput) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            log.warning("skipping an unreadable member of %s (score %.0f): %s", zkey, score, exc)
            return None

    async def get_context(self, key: KeyLike, max_tokens: int = 500) -> str:
        """Nothing extra: the dialogue is per device, so ``get_messages`` already spans reconnects."""
        as_key(key)
        return ""

    async def search(self, key: KeyLike, query: str, top_k: int = 10, time_range_days: int | None = None) -> list[str]:
        key = as_key(key)
        terms = [t.casefold() for t in memory_terms(query)]
        if top_k <= 0 or not terms:
            return []
        days = self.search_days if time_range_days is None else time_range_days
        if days < 0:
            raise InvalidInput(f"time_range_days must be >= 0 (0 = no limit), got {days}")
        low: float | str = time.time_ns() - days * 86_400 * 10**9 if days else "-inf"
        zkey = self.dialogue_key(key.device_id)
        with self._errors(zkey):
            rows = await self.client.zrange(
                zkey, "+inf", low, desc=True, byscore=True, offset=0, num=self.max_messages, withscores=True
            )
        lines: list[str] = []
        for member, score in rows:
            message = self._decode(zkey, member, score)
            if message is None or is_echo(message.role, message.content, query):
                continue
            folded = message.content.casefold()
            if any(term in folded for term in terms):
                lines.append(format_memory_line(_time(score), message.role, message.content))
                if len(lines) >= top_k:
                    break
        return lines

    async def reset(self, key: KeyLike) -> None:
        key = as_key(key)
        zkey = self.dialogue_key(key.device_id)
        with self._errors(zkey):
            await self.client.delete(zkey)

    async def flush(self, key: KeyLike) -> None:
        as_key(key)  # every add is already in Redis; its own persistence (AOF/RDB) is Redis's business

    # ---- system prompt --------------------------------------------------------------------------

    async def get_system_prompt(self, device: MemoryKey | str) -> str | None:
        """The device's system prompt; ``device`` is a MemoryKey or a bare device id."""
        device_id = device.device_id if isinstance(device, MemoryKey) else device
        skey = self.system_prompt_key(device_id)
        with self._errors(skey):
            value = await self.client.get(skey)
        return None if value is None else _text(value)

    async def set_system_prompt(self, device: MemoryKey | str, prompt: str) -> None:
        device_id = device.device_id if isinstance(device, MemoryKey) else device
        if not isinstance(prompt, str):
            raise InvalidInput(f"system prompt must be text, got {type(prompt).__name__}")
        skey = self.system_prompt_key(device_id)
        with self._errors(skey):
            await self.client.set(skey, prompt)

    async def close(self) -> None:
        if self.owns_client:
            await self.client.aclose()
