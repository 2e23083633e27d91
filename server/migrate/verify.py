"""``xiaozhi migrate verify``: is everything the sources hold in the target? (S25)

Reads the sources again exactly as the migrations do and checks, by id, which of their records the target
has: per MySQL table, and per device for Redis (messages, sessions, system prompts). ``invalid`` are
records a migration skips (listed in its report); ``missing`` are valid records the target lacks — those
mean the migration has not run to the end (re-run it) or a row was refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

import asyncpg

from server.migrate.mysql_source import MysqlSource
from server.migrate.mysql_tables import TABLES, RowConverter, RowRefused
from server.migrate.redis_source import RedisSource
from server.migrate.redis_to_pg import key_records


@dataclass
class Check:
    name: str  # a table, or "<table> <device>"
    source: int = 0
    invalid: int = 0
    present: int = 0
    target_total: int | None = None

    @property
    def expected(self) -> int:
        return self.source - self.invalid

    @property
    def missing(self) -> int:
        return self.expected - self.present

    @property
    def ok(self) -> bool:
        return self.missing == 0


async def _present(conn: asyncpg.Connection, table: str, column: str, ids: Sequence[Any], pg_type: str) -> int:
    if not ids:
        return 0
    return int(await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {column} = ANY($1::{pg_type}[])", list(ids)))


async def verify_mysql(
    source: MysqlSource, conn: asyncpg.Connection, tables: Sequence[str], *, batch_size: int, datetime_tz: tzinfo
) -> list[Check]:
    present_tables = await source.tables()
    checks: list[Check] = []
    for table in tables:
        check = Check(table)
        checks.append(check)
        check.target_total = int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
        if table not in present_tables:
            continue
        spec = TABLES[table]
        available = set(await source.columns(table))
        selected = [c for c in spec.column_names if c in available]
        converter: RowConverter | None = None
        async for codes, rows in source.stream(table, selected, batch_size):
            converter = converter or RowConverter(spec, selected, codes, datetime_tz)
            ids: list[int] = []
            for row in rows:
                try:
                    ids.append(converter.convert(row)[0][0])
                except RowRefused:
                    check.invalid += 1
            check.source += len(rows)
            check.present += await _present(conn, table, "id", ids, "int8")
    return checks


@dataclass
class DeviceCheck:
    device_id: str
    messages: Check
    sessions: Check
    prompt: Check


async def verify_redis(
    source: RedisSource, conn: asyncpg.Connection, *, gap_ns: int, batch_size: int
) -> tuple[list[Check], list[DeviceCheck], int]:
    """Totals (messages, sessions, system prompts), one check per device, and how many keys could not be read
    (wrong type, unusable device id; the migration's report lists them)."""
    devices: dict[str, DeviceCheck] = {}

    def device(device_id: str) -> DeviceCheck:
        found = devices.get(device_id)
        if found is None:
            found = devices[device_id] = DeviceCheck(
                device_id, Check("conversation_messages"), Check("conversation_sessions"), Check("system_prompts")
            )
        return found

    chunk = max(100, min(batch_size, 5000))
    bad_keys = 0

    def bad_key(key: bytes, reason: str) -> None:
        nonlocal bad_keys
        bad_keys += 1

    async for skey in source.keys(bad_key):
        entry = device(skey.device_id)
        if skey.kind == "prompt":
            raw = await source.get(skey.key)
            entry.prompt.source += 1
            text = _utf8(raw)
            if text is None or "\x00" in text:
                entry.prompt.invalid += 1
            else:
                entry.prompt.present += int(
                    await conn.fetchval(
                        "SELECT count(*) FROM system_prompts WHERE device_id = $1 AND prompt = $2", skey.device_id, text
                    )
                )
            continue
        sessions: set[str] = set()
        invalid = 0

        def refused(reason: str, key: str, locator: str, loc: int, raw: bytes) -> None:
            nonlocal invalid
            invalid += 1

        async for piece, n in key_records(source, skey, gap_ns=gap_ns, chunk=chunk, on_refused=refused):
            entry.messages.source += n
            ids = [r[2] for r in piece.records]
            entry.messages.present += await _present(conn, "conversation_messages", "message_id", ids, "text")
            sessions.update(r[0] for r in piece.records)
        entry.messages.invalid += invalid
        entry.sessions.source += len(sessions)
        entry.sessions.present += await _present(conn, "conversation_sessions", "session_id", sorted(sessions), "text")
    totals = [Check("conversation_messages"), Check("conversation_sessions"), Check("system_prompts")]
    for entry in devices.values():
        for total, part in zip(totals, (entry.messages, entry.sessions, entry.prompt), strict=True):
            total.source += part.source
            total.invalid += part.invalid
            total.present += part.present
    for total in totals:
        total.target_total = int(await conn.fetchval(f"SELECT count(*) FROM {total.name}"))
    return totals, sorted(devices.values(), key=lambda d: d.device_id), bad_keys


def _utf8(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def check_lines(title: str, checks: Sequence[Check]) -> list[str]:
    lines = [
        f"{title:<32} {'source':>10} {'invalid':>8} {'expected':>10} {'in target':>10} {'missing':>8} "
        f"{'target total':>12}"
    ]
    for c in checks:
        total = "" if c.target_total is None else f"{c.target_total:,}"
        lines.append(
            f"{c.name:<32} {c.source:>10,} {c.invalid:>8,} {c.expected:>10,} {c.present:>10,} {c.missing:>8,} "
            f"{total:>12}  {'OK' if c.ok else 'MISSING'}"
        )
    return lines


def device_lines(devices: Sequence[DeviceCheck], *, show_all: bool) -> list[str]:
    shown = [d for d in devices if show_all or not (d.messages.ok and d.sessions.ok and d.prompt.ok)]
    if not shown:
        return [f"per device: all {len(devices):,} devices complete"]
    lines = [
        f"{'device':<32} {'messages':>10} {'invalid':>8} {'in target':>10} {'missing':>8} {'sessions':>9} "
        f"{'missing':>8} {'prompt':>7}"
    ]
    for d in shown:
        m, s, p = d.messages, d.sessions, d.prompt
        prompt = "-" if p.source == 0 else ("ok" if p.ok else ("invalid" if p.invalid else "missing"))
        lines.append(
            f"{d.device_id:<32} {m.source:>10,} {m.invalid:>8,} {m.present:>10,} {m.missing:>8,} {s.source:>9,} "
            f"{s.missing:>8,} {prompt:>7}"
        )
    return lines
