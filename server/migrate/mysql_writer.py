"""Writes batches of converted manager rows into PostgreSQL, keeping their ids.

Per batch, in one transaction: rows whose unique key (username, device_code, (type, config_id)) belongs to
another id are skipped; references to rows that do not exist become NULL (what ``ON DELETE SET NULL`` would
have done); then ``UPDATE`` the rows that exist and differ, ``INSERT`` the new ones. A re-run therefore
changes nothing that is already equal. A batch PostgreSQL refuses is retried row by row under savepoints,
so one bad row is skipped, not its batch.

A dry run runs the same checks (read-only queries) and counts what would be inserted and updated.

Decision: the schema's ``updated_at`` trigger fires on an UPDATE, so a row that changed in MySQL since the
last run gets the time of the re-run as ``updated_at``; ``updated_at`` alone does not count as a change
(otherwise every re-run would rewrite those rows again).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from server.migrate.mysql_source import MysqlSource
from server.migrate.mysql_tables import Column, TableSpec
from server.migrate.pg_target import on_target
from server.migrate.report import Report

Row = tuple[Any, ...]


@dataclass
class TableResult:
    table: str
    source: int = 0  # rows in the MySQL table (the snapshot)
    read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    adjusted: int = 0
    target: int = 0  # rows in the PostgreSQL table afterwards (a dry run: now + would insert)
    note: str = ""


def _value_sql(column: Column, zones: dict[str, str]) -> str:
    if column.kind == "json":
        return f"v.{column.name}::jsonb"
    if column.kind == "time":
        zone = zones.get(column.name, "UTC").replace("'", "''")
        return f"(v.{column.name} AT TIME ZONE '{zone}')"
    return f"v.{column.name}"


class TableSql:
    """The statements for one table, built once from its spec and the zones of its time columns."""

    def __init__(self, spec: TableSpec, zones: dict[str, str]) -> None:
        t = spec.name
        names = ", ".join(spec.column_names)
        args = ", ".join(f"${i + 1}::{c.pg_type}[]" for i, c in enumerate(spec.columns))
        source = f"unnest({args}) AS v({names})"
        sets, compare_t, compare_v, inserts = [], [], [], []
        for c in spec.columns:
            value = _value_sql(c, zones)
            if c.kind == "id":
                inserts.append(value)
                continue
            if c.default == "now":
                new, kept = f"coalesce({value}, t.{c.name})", f"coalesce({value}, now())"
            elif not c.overwrite:
                new, kept = f"coalesce(t.{c.name}, {value})", value
            else:
                new, kept = value, value
            sets.append(f"{c.name} = {new}")
            inserts.append(kept)
            if c.name != "updated_at":
                compare_t.append(f"t.{c.name}")
                compare_v.append(new)
        differs = f"({', '.join(compare_t)}) IS DISTINCT FROM ({', '.join(compare_v)})"
        # One statement, so the batch's arrays travel once: update the rows that exist and differ, insert the
        # rest (both parts see the table as it was before the statement).
        self.upsert = (
            f"WITH v AS (SELECT * FROM {source}), "
            f"upd AS (UPDATE {t} AS t SET {', '.join(sets)} FROM v WHERE t.id = v.id AND {differs} RETURNING t.id), "
            f"ins AS (INSERT INTO {t} ({names}) SELECT {', '.join(inserts)} FROM v "
            f"WHERE NOT EXISTS (SELECT 1 FROM {t} x WHERE x.id = v.id) ON CONFLICT (id) DO NOTHING RETURNING id) "
            "SELECT (SELECT count(*) FROM ins) AS inserted, (SELECT count(*) FROM upd) AS updated"
        )
        self.classify = (
            f"SELECT count(*) FILTER (WHERE t.id IS NULL) AS new, "
            f"count(*) FILTER (WHERE t.id IS NOT NULL AND {differs}) AS changed "
            f"FROM {source} LEFT JOIN {t} t ON t.id = v.id"
        )
        self.key_conflicts = []
        for key in spec.unique:
            cols = ", ".join(key)
            key_args = ", ".join(["$1::int8[]"] + [f"${i + 2}::text[]" for i in range(len(key))])
            on = " AND ".join(f"t.{k} = v.{k}" for k in key)
            self.key_conflicts.append(
                f"SELECT v.id, t.id AS owner FROM unnest({key_args}) AS v(id, {cols}) JOIN {t} t ON {on} "
                "WHERE t.id <> v.id"
            )


def _reset_sequence(table: str) -> str:
    return f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), coalesce(max(id), 0) + 1, false) FROM {table}"


class TableWriter:
    def __init__(
        self,
        conn: asyncpg.Connection,
        spec: TableSpec,
        result: TableResult,
        report: Report,
        source: MysqlSource,
        *,
        dry_run: bool,
        schema_missing: bool,
        run_tables: Sequence[str],
        refused: dict[str, set[int]],
    ) -> None:
        self.conn = conn
        self.spec = spec
        self.sql = TableSql(spec, {})
        self.result = result
        self.report = report
        self.source = source
        self.dry_run = dry_run
        self.schema_missing = schema_missing
        self.run_tables = run_tables
        self.refused = refused
        self.source_unique: set[tuple[str, ...]] = set()  # keys MySQL enforces itself: no source check needed

    def use_zones(self, zones: dict[str, str]) -> None:
        """The zones the source's time columns are in (known once the first batch was read)."""
        self.sql = TableSql(self.spec, zones)

    def _where(self, row: Row) -> dict[str, Any]:
        return {"table": self.spec.name, "id": row[0]}

    def _skip(self, row: Row, reason: str) -> None:
        self.refuse(row[0], reason)

    def refuse(self, row_id: Any, reason: str, record: Any = None) -> None:
        """Skip a row: report it, count it, and remember its id (children's references to it become NULL)."""
        self.report.skip(reason, {"table": self.spec.name, "id": row_id}, record)
        self.result.skipped += 1
        if isinstance(row_id, int):
            self.refused.setdefault(self.spec.name, set()).add(row_id)

    async def process(self, rows: list[Row]) -> None:
        await on_target(self._process(rows), during=f" during {self.spec.name}")

    async def _process(self, rows: list[Row]) -> None:
        rows = await self._unique_keys(rows)
        rows = await self._references(rows)
        if not rows:
            return
        if self.dry_run:
            await self._classify(rows)
        else:
            await self._write(rows)

    # ---- checks ---------------------------------------------------------------------------------------

    async def _unique_keys(self, rows: list[Row]) -> list[Row]:
        """Skip rows whose unique key an earlier source row (lower id) or another target row already has."""
        for key, conflict_sql in zip(self.spec.unique, self.sql.key_conflicts, strict=True):
            positions = [self.spec.index(k) for k in key]
            keys = [tuple(row[p] for p in positions) for row in rows]
            enforced = any(set(u) <= set(key) for u in self.source_unique)
            owners = [] if enforced else await self.source.key_owners(self.spec.name, key, sorted(set(keys)))
            refused = self.refused.get(self.spec.name, set())
            first: dict[tuple[str, ...], int] = {}
            for owner_id, *owner_key in owners:
                k = tuple(owner_key)
                if owner_id not in refused and (k not in first or owner_id < first[k]):
                    first[k] = owner_id
            kept: list[Row] = []
            for row, k in zip(rows, keys, strict=True):
                owner = first.get(k, row[0])
                if owner < row[0]:
                    self._skip(row, f"duplicate {'/'.join(key)} {_show(k)}: source id {owner} has it and is migrated")
                else:
                    kept.append(row)
            rows = kept
            if self.schema_missing or not rows:
                continue
            args = [[r[0] for r in rows]] + [[r[p] for r in rows] for p in positions]
            taken = {r["id"]: r["owner"] for r in await self.conn.fetch(conflict_sql, *args)}
            kept = []
            for row, k in zip(rows, [tuple(r[p] for p in positions) for r in rows], strict=True):
                if row[0] in taken:
                    owner = taken[row[0]]
                    self._skip(
                        row, f"duplicate {'/'.join(key)} {_show(k)}: the target's {self.spec.name}.id {owner} has it"
                    )
                else:
                    kept.append(row)
            rows = kept
        return rows

    async def _references(self, rows: list[Row]) -> list[Row]:
        """References to ids that exist neither in the target nor among the rows this run migrates → NULL."""
        for column in self.spec.refs:
            pos = self.spec.index(column.name)
            parent = column.ref
            assert parent is not None
            wanted = {row[pos] for row in rows if row[pos] is not None}
            if not wanted:
                continue
            present: set[int] = set()
            if not self.schema_missing:
                found = await self.conn.fetch(f"SELECT id FROM {parent} WHERE id = ANY($1::int8[])", list(wanted))
                present = {r["id"] for r in found}
            missing = wanted - present
            if missing and self.dry_run and parent in self.run_tables:
                # not written yet in a dry run: it will exist if the source has it and it is not skipped
                missing -= await self.source.existing_ids(parent, sorted(missing)) - self.refused.get(parent, set())
            if not missing:
                continue
            fixed: list[Row] = []
            for row in rows:
                if row[pos] in missing:
                    self.report.adjust(
                        f"dangling reference: {column.name} {row[pos]} does not exist in {parent}: stored as NULL",
                        self._where(row),
                    )
                    self.result.adjusted += 1
                    row = (*row[:pos], None, *row[pos + 1 :])
                fixed.append(row)
            rows = fixed
        return rows

    # ---- writes ---------------------------------------------------------------------------------------

    def _columns(self, rows: Sequence[Row]) -> list[list[Any]]:
        return [list(col) for col in zip(*rows, strict=True)]

    async def _classify(self, rows: list[Row]) -> None:
        if self.schema_missing:
            self.result.inserted += len(rows)
            return
        rec = await self.conn.fetchrow(self.sql.classify, *self._columns(rows))
        assert rec is not None
        self.result.inserted += rec["new"]
        self.result.updated += rec["changed"]
        self.result.unchanged += len(rows) - rec["new"] - rec["changed"]

    async def _upsert(self, rows: Sequence[Row]) -> tuple[int, int]:
        rec = await self.conn.fetchrow(self.sql.upsert, *self._columns(rows))
        assert rec is not None
        return rec["inserted"], rec["updated"]

    async def _write(self, rows: list[Row]) -> None:
        refused = 0
        try:
            async with self.conn.transaction():
                inserted, updated = await self._upsert(rows)
        except asyncpg.PostgresError:
            inserted = updated = 0
            async with self.conn.transaction():  # row by row: one refused row must not cost its batch
                for row in rows:
                    try:
                        async with self.conn.transaction():
                            i, u = await self._upsert([row])
                    except asyncpg.PostgresError as exc:
                        self._skip(row, f"refused by PostgreSQL: {str(exc).splitlines()[0]}")
                        refused += 1
                        continue
                    inserted += i
                    updated += u
        self.result.inserted += inserted
        self.result.updated += updated
        self.result.unchanged += len(rows) - refused - inserted - updated

    async def finish(self) -> None:
        """After the table: the id sequence continues after the highest id (ours or the target's own)."""
        if not self.dry_run:
            await self.conn.fetchval(_reset_sequence(self.spec.name))


def _show(key: tuple[Any, ...]) -> str:
    return repr(key[0]) if len(key) == 1 else repr(key)
