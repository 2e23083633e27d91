"""The five manager tables the MySQL migration moves (upstream-storage.md §3.10), and how a MySQL row becomes
a PostgreSQL row — or is refused with a reason.

Rows are read with ``use_unicode=False`` so every text value arrives as bytes and is decoded here, strictly:
a value that is not UTF-8 skips its row (with the column named) instead of ending the whole stream.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any, Literal

Kind = Literal["id", "ref", "text", "bool", "time", "json"]

# cursor.description type codes (MySQL protocol)
MYSQL_TIMESTAMP = 7
MYSQL_DATE = 10
MYSQL_DATETIME = 12

PG_BIGINT_MAX = 2**63 - 1


class RowRefused(ValueError):
    """This row cannot be stored; ``str()`` is the report's reason."""


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    max_len: int | None = None  # varchar(n) in the target, counted in characters as both databases do
    required: bool = False  # NOT NULL without a default: a NULL refuses the row
    default: Any = None  # NOT NULL with a default: a NULL is stored as this (reported as adjusted)
    ref: str | None = None  # kind "ref": the table whose id this is
    overwrite: bool = True  # False: a re-run keeps the target's value when it has one (devices' secrets)

    @property
    def pg_type(self) -> str:
        return {"id": "int8", "ref": "int8", "text": "text", "bool": "bool", "time": "timestamp", "json": "text"}[
            self.kind
        ]


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[Column, ...]
    unique: tuple[tuple[str, ...], ...] = ()  # besides id; a row whose key belongs to another id is skipped
    column_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "column_names", tuple(c.name for c in self.columns))

    def index(self, name: str) -> int:
        return self.column_names.index(name)

    @property
    def refs(self) -> list[Column]:
        return [c for c in self.columns if c.kind == "ref"]


def _times() -> tuple[Column, Column]:
    return Column("created_at", "time", default="now"), Column("updated_at", "time", default="now")


# In dependency order: agents before devices (devices.agent_id references agents in our schema; the Go
# script's order users, devices, agents would break that foreign key).
TABLES: dict[str, TableSpec] = {
    t.name: t
    for t in (
        TableSpec(
            "users",
            (
                Column("id", "id"),
                Column("username", "text", 64, required=True),
                Column("password", "text", 255),
                Column("email", "text", 255),
                Column("role", "text", 32, default="user"),
                *_times(),
            ),
            unique=(("username",),),
        ),
        TableSpec(
            "agents",
            (
                Column("id", "id"),
                Column("user_id", "ref", ref="users"),
                Column("name", "text", 128, required=True),
                Column("custom_prompt", "text"),
                Column("llm_config_id", "text", 128),
                Column("tts_config_id", "text", 128),
                Column("asr_speed", "text", 32),
                Column("status", "text", 32, default="active"),
                *_times(),
            ),
        ),
        TableSpec(
            "devices",
            (
                Column("id", "id"),
                Column("user_id", "ref", ref="users"),
                Column("agent_id", "ref", ref="agents"),
                Column("device_code", "text", 128, required=True),
                Column("device_name", "text", 128),
                Column("challenge", "text", 255, overwrite=False),
                Column("pre_secret_key", "text", 255, overwrite=False),
                Column("activated", "bool", default=False),
                Column("last_active_at", "time"),
                *_times(),
            ),
            unique=(("device_code",),),
        ),
        TableSpec(
            "configs",
            (
                Column("id", "id"),
                Column("type", "text", 32, required=True),
                Column("name", "text", 128, required=True),
                Column("config_id", "text", 128, required=True),
                Column("provider", "text", 64, default=""),
                Column("json_data", "json", default="{}"),
                Column("enabled", "bool", default=True),
                Column("is_default", "bool", default=False),
                *_times(),
            ),
            unique=(("type", "config_id"),),
        ),
        TableSpec(
            "global_roles",
            (
                Column("id", "id"),
                Column("name", "text", 128, required=True),
                Column("description", "text"),
                Column("prompt", "text"),
                Column("is_default", "bool", default=False),
                *_times(),
            ),
        ),
    )
}
TABLE_ORDER = tuple(TABLES)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def zone_name(zone: tzinfo) -> str:
    """The IANA name PostgreSQL knows the zone by."""
    return getattr(zone, "key", None) or ("UTC" if zone.utcoffset(None) == timedelta(0) else str(zone))


class RowConverter:
    """MySQL row (tuple in ``source_columns`` order) → PostgreSQL values in the spec's column order.

    Times stay naive (as MySQL gives them); ``zones`` says per column which zone they are wall-clock times
    in, and the SQL attaches it (``AT TIME ZONE``): TIMESTAMP columns come in the session time zone, which
    the source connection sets to UTC; DATETIME values are in whatever zone the application wrote them
    (``--mysql-timezone``; the Go manager writes UTC).
    """

    def __init__(self, spec: TableSpec, source_columns: list[str], type_codes: list[int], datetime_tz: tzinfo) -> None:
        self.spec = spec
        position = {name: i for i, name in enumerate(source_columns)}
        self.positions = [position.get(c.name) for c in spec.columns]  # None: column absent in the source
        self.zones: dict[str, str] = {}
        for column, pos in zip(spec.columns, self.positions, strict=True):
            if column.kind == "time":
                code = type_codes[pos] if pos is not None else None
                self.zones[column.name] = "UTC" if code == MYSQL_TIMESTAMP else zone_name(datetime_tz)
        self._steps = [(c, pos, _CONVERTERS[c.kind]) for c, pos in zip(spec.columns, self.positions, strict=True)]

    def convert(self, row: tuple[Any, ...]) -> tuple[tuple[Any, ...], list[str] | None]:
        """The target values and the adjustments made (None: none); raises RowRefused."""
        out: list[Any] = []
        notes: list[str] | None = None
        for column, pos, fn in self._steps:
            raw = None if pos is None else row[pos]
            value = None if raw is None and column.kind != "id" else fn(column, raw)
            if value is None and column.kind != "ref":
                if column.required:
                    raise RowRefused(f"missing {column.name} (NULL, but the target requires a value)")
                if column.default is not None:
                    notes = notes or []
                    if column.default == "now":  # the SQL fills it in: now() on insert, the target's on update
                        notes.append(f"{column.name} was NULL: stored as the time of the migration")
                    else:
                        notes.append(f"{column.name} was NULL: stored as {column.default!r}")
                        value = column.default
            out.append(value)
        return tuple(out), notes


def _id(column: Column, raw: Any) -> int:
    if type(raw) is not int or raw < 1:
        raise RowRefused(f"missing id (got {raw!r})")
    if raw > PG_BIGINT_MAX:
        raise RowRefused(f"id {raw} is out of PostgreSQL bigint range")
    return raw


def _ref(column: Column, raw: Any) -> int | None:
    if type(raw) is int and 0 < raw <= PG_BIGINT_MAX:
        return raw
    return None  # 0 is the manager's "none" (GORM writes 0 for an unset uint)


def _bool(column: Column, raw: Any) -> bool:
    if type(raw) is int:
        return raw != 0
    if isinstance(raw, bytes):  # BIT(1)
        return any(raw)
    if isinstance(raw, Decimal | float):
        return bool(raw)
    raise RowRefused(f"{column.name}: {raw!r} is not a boolean")


def _json(column: Column, raw: Any) -> str:
    text = _text(column, raw)
    try:
        parsed = _JSON.decode(text)
    except ValueError as exc:
        raise RowRefused(f"invalid JSON in {column.name}: {exc}") from None
    if "\\u0000" in text:
        raise RowRefused(f"{column.name} contains a \\u0000 escape, which PostgreSQL jsonb cannot hold")
    return json.dumps(parsed, ensure_ascii=False, separators=(",", ":"))


def _text(column: Column, raw: Any) -> str:
    if type(raw) is bytes:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RowRefused(
                f"{column.name} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
            ) from None
    elif isinstance(raw, bytes | bytearray):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RowRefused(
                f"{column.name} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
            ) from None
    elif isinstance(raw, str):
        text = raw
    elif isinstance(raw, int | Decimal) or (isinstance(raw, float) and math.isfinite(raw)):
        text = str(raw)
    else:
        raise RowRefused(f"{column.name}: {type(raw).__name__} value {raw!r} is not text")
    if "\x00" in text:
        raise RowRefused(f"{column.name} contains a NUL character, which PostgreSQL text cannot hold")
    if column.max_len is not None and len(text) > column.max_len:
        raise RowRefused(f"{column.name} is {len(text)} characters long; the target allows {column.max_len}")
    return text


def _time(column: Column, raw: Any) -> datetime | None:
    """A naive datetime (its zone is attached in SQL), or None for MySQL's zero date."""
    if type(raw) is datetime:
        return raw if raw.tzinfo is None else raw.astimezone(UTC).replace(tzinfo=None)
    if isinstance(raw, date):
        return datetime(raw.year, raw.month, raw.day)
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
    if text.startswith("0000-00-00"):
        return None  # MySQL's zero date: "no value"
    raise RowRefused(f"{column.name}: {text!r} is not a valid date and time")


_CONVERTERS = {"id": _id, "ref": _ref, "text": _text, "bool": _bool, "time": _time, "json": _json}
