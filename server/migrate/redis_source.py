"""The Redis source, read-only (SCAN, TYPE, ZCARD, LLEN, ZRANGE, LRANGE, GET — nothing that writes).

Layouts read (upstream-storage.md §3.9–3.10), ``<prefix>`` given with or without its trailing colon:

* ``<prefix>:llm:<device>`` — sorted set, the Go server's dialogue: score = insert time in Unix ns, member =
  eino ``schema.Message`` JSON;
* ``<prefix>:llm:system:<device>`` — string, the device's system prompt;
* ``<prefix>:conversation:<device>[:<session>]`` — list of ``{role, content, tool_calls?, tool_call_id?,
  timestamp? (ms)}``, the layout the design assumed.

Device ids are MAC addresses full of colons: after ``llm:`` the whole rest of the key is the device. For the
list layout a leading MAC address is the device and what follows it the session; otherwise the key is split
at its last colon. The Go server's code default prefix ``"xiaozhi:"`` produced keys with a double colon
(``xiaozhi::llm:…``); those are read too.

A sorted set is read in chunks by score (``ZRANGE … BYSCORE LIMIT``), so memory holds one chunk of even
the largest history, and members the old server adds meanwhile are picked up, not skipped or doubled.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.memory.redis_store import normalise_prefix
from server.migrate.errors import MigrationError
from server.storage.errors import InvalidInput
from server.storage.models import MAX_CONTENT_CHARS, MAX_DEVICE_ID, ROLES, check_id

KeyKind = Literal["dialogue", "prompt", "list"]
SCAN_COUNT = 1000
_MAC = re.compile(r"^[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){5}")
_GLOB = re.compile(r"([*?\[\]\\])")


@dataclass(frozen=True)
class RedisSettings:
    host: str = "127.0.0.1"
    port: int = 6379
    password: str = ""
    db: int = 0
    key_prefix: str = "xiaozhi"

    def describe(self) -> str:
        return f"Redis {self.host}:{self.port}/{self.db}"


@dataclass(frozen=True, slots=True)
class SourceKey:
    key: bytes
    kind: KeyKind
    device_id: str
    session: str | None = None  # list layout only

    @property
    def name(self) -> str:
        return self.key.decode("utf-8", "backslashreplace")


@dataclass
class Survey:
    """What a first pass over the keys found (for the progress bar and the summary's source counts)."""

    keys: dict[str, int] = field(default_factory=lambda: {"dialogue": 0, "list": 0, "prompt": 0})
    records: int = 0  # members of the dialogue sets + elements of the lists
    ignored: int = 0  # keys under the prefix in no layout we read


class Refused(ValueError):
    """This record (or key) cannot be migrated; ``str()`` is the report's reason."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_JSON = json.JSONDecoder(
    parse_constant=_reject_constant
)  # one decoder: json.loads(…, parse_constant=…) builds one a call


def parse_key(key: bytes, prefix: str) -> tuple[KeyKind | Literal["system?"], str, str | None] | None:
    """(kind by name, device, session) for a key under ``prefix`` (normalised), or None when it is no layout
    of ours. ``"system?"``: ``llm:system:<d>`` is a prompt if it is a string, else the dialogue of a device
    whose id starts with ``system:``. Raises Refused for a key name that is not UTF-8."""
    try:
        name = key.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused("key name is not valid UTF-8") from None
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix) :]
    if prefix and rest.startswith(":"):
        rest = rest[1:]  # "xiaozhi:" + ":llm:…" — the Go code default's double colon
    if rest.startswith("llm:system:"):
        return "system?", rest[len("llm:system:") :], None
    if rest.startswith("llm:"):
        return "dialogue", rest[len("llm:") :], None
    if rest.startswith("conversation:"):
        rest = rest[len("conversation:") :]
        mac = _MAC.match(rest)
        if mac and (len(rest) == mac.end() or rest[mac.end()] == ":"):
            device, session = mac[0], rest[mac.end() + 1 :] or None
        else:
            device, sep, session_part = rest.rpartition(":")
            device, session = (device, session_part or None) if sep else (rest, None)
        return "list", device, session
    return None


def decode_message(raw: bytes, *, with_timestamp: bool = False) -> tuple[Any, ...]:
    """A Redis record → (role, content, multi_content JSON, tool_calls JSON, tool_call_id, metadata JSON,
    timestamp ms or None). Raises Refused with the reason."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refused(f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    try:
        data = _JSON.decode(text)
    except ValueError as exc:
        raise Refused(f"invalid JSON: {exc}") from None
    if type(data) is not dict:
        raise Refused(f"not a JSON object but {type(data).__name__}")
    role = data.get("role")
    if role not in ROLES:
        raise Refused("missing role" if role in (None, "") else f"unknown role {role!r}")
    content = data.get("content")
    if content is None:
        content = ""
    elif type(content) is not str:
        raise Refused(f"content is {type(content).__name__}, not text")
    if len(content) > MAX_CONTENT_CHARS:
        raise Refused(f"content is {len(content):,} characters; at most {MAX_CONTENT_CHARS:,} are stored")
    multi = _json_list(data, "multi_content")
    tools = _json_list(data, "tool_calls")
    tool_call_id = data.get("tool_call_id") or None
    if tool_call_id is not None:
        try:
            check_id("tool_call_id", tool_call_id, 64)
        except InvalidInput as exc:
            raise Refused(str(exc)) from None
    name = data.get("name") or None
    meta = None if not isinstance(name, str) else json.dumps({"name": name}, ensure_ascii=False)
    if "\\u" in text:  # escapes are the only way a NUL or a lone surrogate gets into valid UTF-8 JSON
        if "\x00" in content:
            raise Refused("content contains a NUL character, which PostgreSQL text cannot hold")
        for label, value in (("content", content), ("multi_content", multi), ("tool_calls", tools), ("name", meta)):
            if value is None:
                continue
            if label != "content" and "\\u0000" in value:
                raise Refused(f"{label} contains a \\u0000 escape, which PostgreSQL jsonb cannot hold")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise Refused(f"{label} contains a lone UTF-16 surrogate escape (broken encoding)") from None
    stamp = None
    if with_timestamp:
        value = data.get("timestamp")
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 2**53:
            stamp = int(value)
    return role, content, multi, tools, tool_call_id, meta, stamp


def _json_list(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name) or None
    if value is None:
        return None
    if type(value) is not list:
        raise Refused(f"{name} is {type(value).__name__}, not a list")
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class RedisSource:
    def __init__(self, settings: RedisSettings, client: aioredis.Redis) -> None:
        self.settings = settings
        self.client = client
        self.prefix = normalise_prefix(settings.key_prefix)
        self.pattern = _GLOB.sub(r"\\\1", self.prefix) + "*"

    @classmethod
    async def open(cls, settings: RedisSettings) -> RedisSource:
        client = aioredis.Redis(
            host=settings.host,
            port=settings.port,
            password=settings.password or None,
            db=settings.db,
            socket_connect_timeout=10,
            socket_timeout=120,
        )
        source = cls(settings, client)
        try:
            await source._call(client.ping())
        except BaseException:
            await client.aclose()
            raise
        return source

    async def close(self) -> None:
        await self.client.aclose()

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except AuthenticationError:
            raise MigrationError(f"{self.settings.describe()}: access denied (check --redis-password)") from None
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise MigrationError(f"{self.settings.describe()} is unreachable: {exc}") from None
        except ResponseError as exc:
            text = str(exc)
            if text.startswith(("NOAUTH", "WRONGPASS")):
                raise MigrationError(f"{self.settings.describe()}: access denied (check --redis-password)") from None
            raise MigrationError(f"{self.settings.describe()}: {text}") from None
        except RedisError as exc:
            raise MigrationError(f"{self.settings.describe()}: {exc}") from None

    async def keys(self, on_bad_key: Any = None) -> AsyncIterator[SourceKey]:
        """Every key of a layout we read, once. ``on_bad_key(key, reason)`` hears about keys that look like
        ours but cannot be read (wrong type, unusable device id)."""
        seen: set[bytes] = set()
        cursor = 0
        while True:
            cursor, batch = await self._call(self.client.scan(cursor, match=self.pattern, count=SCAN_COUNT))
            fresh = [k for k in batch if k not in seen]
            seen.update(fresh)
            parsed: list[tuple[bytes, Any]] = []
            for key in fresh:
                try:
                    found = parse_key(key, self.prefix)
                except Refused as exc:
                    if on_bad_key:
                        on_bad_key(key, str(exc))
                    continue
                if found is not None:
                    parsed.append((key, found))
            if parsed:
                async with self.client.pipeline(transaction=False) as pipe:
                    for key, _ in parsed:
                        pipe.type(key)
                    types = await self._call(pipe.execute())
                for (key, (kind, device, session)), kind_type in zip(parsed, types, strict=True):
                    result = _classify(key, kind, device, session, kind_type)
                    if isinstance(result, SourceKey):
                        yield result
                    elif result and on_bad_key:
                        on_bad_key(key, result)
            if cursor == 0:
                return

    async def survey(self) -> Survey:
        """Count keys and records (one cheap pass: SCAN, TYPE, ZCARD/LLEN)."""
        survey = Survey()
        pending: list[SourceKey] = []

        async def count() -> None:
            async with self.client.pipeline(transaction=False) as pipe:
                for k in pending:
                    if k.kind == "dialogue":
                        pipe.zcard(k.key)
                    else:
                        pipe.llen(k.key)
                survey.records += sum(await self._call(pipe.execute()))
            pending.clear()

        async for key in self.keys():
            survey.keys[key.kind] += 1
            if key.kind != "prompt":
                pending.append(key)
                if len(pending) >= SCAN_COUNT:
                    await count()
        if pending:
            await count()
        return survey

    async def dialogue(self, key: bytes, chunk: int) -> AsyncIterator[list[tuple[bytes, float]]]:
        """(member, score) in score order, ``chunk`` at a time. Equal scores are walked with an offset, so
        any number of them is read exactly once."""
        low: float | str = "-inf"
        skip = 0
        while True:
            # the reply as the parser gives it: redis-py's zrange() re-formats every score, which costs more than
            # everything else we do with a member
            reply = await self._call(
                self.client.execute_command(
                    "ZRANGE", key, low, "+inf", "BYSCORE", "LIMIT", skip, chunk, "WITHSCORES", keys=[key]
                )
            )
            if reply and isinstance(reply[0], list | tuple):  # pairs (RESP3, or redis-py's callback)
                rows = [(m, float(sc)) for m, sc in reply]
            else:  # flat member, score, member, score … (RESP2)
                rows = list(zip(reply[0::2], map(float, reply[1::2]), strict=True))
            if rows:
                yield rows
            if len(rows) < chunk:
                return
            last = rows[-1][1]
            same = sum(1 for _, score in rows if score == last)
            if last == low:
                skip += len(rows)
            else:
                low, skip = last, same

    async def list_elements(self, key: bytes, chunk: int) -> AsyncIterator[tuple[int, list[bytes]]]:
        """(index of the first element, elements), ``chunk`` at a time."""
        start = 0
        while True:
            rows = await self._call(self.client.lrange(key, start, start + chunk - 1))
            if rows:
                yield start, rows
            if len(rows) < chunk:
                return
            start += len(rows)

    async def get(self, key: bytes) -> bytes | None:
        return await self._call(self.client.get(key))


def _classify(key: bytes, kind: str, device: str, session: str | None, redis_type: bytes) -> SourceKey | str | None:
    """The key to read, a reason it cannot be read, or None (not ours)."""
    shown = redis_type.decode() if isinstance(redis_type, bytes) else str(redis_type)
    if shown == "none":
        return None  # gone since the SCAN
    if kind == "system?":
        if shown == "string":
            kind = "prompt"
        elif shown == "zset":
            kind, device = "dialogue", "system:" + device
        else:
            return f"a {shown}, but a system prompt key holds a string"
    elif kind == "dialogue" and shown != "zset":
        return f"a {shown}, but a dialogue key holds a sorted set"
    elif kind == "list" and shown != "list":
        return f"a {shown}, but a conversation key holds a list"
    try:
        check_id("device id", device, MAX_DEVICE_ID)
    except InvalidInput as exc:
        return f"unusable device id: {exc}"
    return SourceKey(key, kind, device, session)  # type: ignore[arg-type]
