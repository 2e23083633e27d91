"""``xiaozhi migrate mysql-to-pg``: the manager tables, table by table, batch by batch (S23, S25).

Reading and converting the next batch overlaps with checking and writing the previous ones, on two
PostgreSQL connections taking turns (our Python on one core, PostgreSQL's work on both). Tables go strictly
one after the other, parents first, so every reference check sees the rows it refers to.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from datetime import tzinfo
from typing import Any, TextIO

import asyncpg

from server.migrate.errors import MigrationError
from server.migrate.mysql_source import MysqlSource
from server.migrate.mysql_tables import TABLE_ORDER, TABLES, RowConverter, RowRefused
from server.migrate.mysql_writer import TableResult, TableWriter
from server.migrate.pg_target import Target, count_rows
from server.migrate.progress import Progress
from server.migrate.report import Report


def parse_tables(text: str | None) -> list[str]:
    """``--tables users,devices`` → the known tables in dependency order."""
    if not text:
        return list(TABLE_ORDER)
    wanted = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in TABLES]
    if unknown or not wanted:
        raise ValueError(
            f"unknown table(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(TABLE_ORDER)}"
        )
    return [t for t in TABLE_ORDER if t in wanted]


async def migrate_mysql(
    source: MysqlSource,
    target: Target,
    tables: Sequence[str],
    *,
    batch_size: int,
    dry_run: bool,
    datetime_tz: tzinfo,
    report: Report,
    writers: int = 2,
    progress_stream: TextIO | None = None,
) -> list[TableResult]:
    """``writers`` connections take turns with the batches of a table (one batch in flight on each), so
    PostgreSQL's share of the work — index probes, index inserts, foreign-key checks — runs on both cores."""
    present = await source.tables()
    results = [TableResult(t) for t in tables]
    for result in results:  # all counts from the same snapshot the rows are read from
        if result.table in present:
            result.source = await source.count(result.table)
    refused: dict[str, set[int]] = {}
    conns = [target.conn] + [await target.connect_more() for _ in range(max(1, writers) - 1)]
    try:
        for result in results:
            if result.table not in present:
                result.note = "no such table in MySQL: nothing to migrate"
            else:
                await _migrate_table(
                    source, conns, result, tables, refused, schema_missing=target.schema_missing,
                    batch_size=batch_size, dry_run=dry_run, datetime_tz=datetime_tz, report=report,
                    progress_stream=progress_stream,
                )  # fmt: skip
            if target.schema_missing:
                result.target = result.inserted
            else:
                result.target = await count_rows(target.conn, result.table) + (result.inserted if dry_run else 0)
    finally:
        for conn in conns[1:]:
            await conn.close()
    return results


async def _migrate_table(
    source: MysqlSource,
    conns: Sequence[asyncpg.Connection],
    result: TableResult,
    run_tables: Sequence[str],
    refused: dict[str, set[int]],
    *,
    schema_missing: bool,
    batch_size: int,
    dry_run: bool,
    datetime_tz: tzinfo,
    report: Report,
    progress_stream: TextIO | None,
) -> None:
    spec = TABLES[result.table]
    available = set(await source.columns(spec.name))
    absent = [c for c in spec.columns if c.name not in available]
    if any(c.kind == "id" or c.required for c in absent):
        names = ", ".join(c.name for c in absent if c.kind == "id" or c.required)
        raise MigrationError(f"MySQL table {spec.name} has no column {names}, which the target requires")
    if absent:
        result.note = "not in MySQL, stored as NULL/default: " + ", ".join(c.name for c in absent)
    selected = [c for c in spec.column_names if c in available]
    shared: dict[str, Any] = {"dry_run": dry_run, "schema_missing": schema_missing, "run_tables": run_tables}
    writers = [TableWriter(conn, spec, result, report, source, refused=refused, **shared) for conn in conns]
    unique = await source.unique_keys(spec.name)
    for w in writers:
        w.source_unique = unique
    writer = writers[0]
    converter: RowConverter | None = None
    pending: deque[asyncio.Task[None]] = deque()
    id_pos = selected.index("id")
    turn = 0
    try:
        with Progress(spec.name, result.source, stream=progress_stream) as bar:
            async for codes, rows in source.stream(spec.name, selected, batch_size):
                if converter is None:
                    converter = RowConverter(spec, selected, codes, datetime_tz)
                    for w in writers:
                        w.use_zones(converter.zones)
                good: list[tuple[Any, ...]] = []
                for row in rows:
                    try:
                        values, notes = converter.convert(row)
                    except RowRefused as exc:
                        writer.refuse(row[id_pos], str(exc))
                        continue
                    for note in notes or ():
                        report.adjust(note, {"table": spec.name, "id": values[0]})
                        result.adjusted += 1
                    good.append(values)
                result.read += len(rows)
                if len(pending) >= len(writers):  # the writer whose turn it is has finished its last batch
                    await pending.popleft()
                pending.append(asyncio.create_task(writers[turn % len(writers)].process(good)))
                turn += 1
                bar.advance(len(rows))
            while pending:
                await pending.popleft()
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    await writer.finish()


def summary_lines(results: Sequence[TableResult], *, dry_run: bool) -> list[str]:
    head = "would insert" if dry_run else "inserted"
    lines = [
        f"{'table':<14} {'source':>9} {head:>12} {'updated':>9} {'unchanged':>9} {'skipped':>8} {'adjusted':>8} "
        f"{'target':>9}"
    ]
    for r in results:
        lines.append(
            f"{r.table:<14} {r.source:>9,} {r.inserted:>12,} {r.updated:>9,} {r.unchanged:>9,} {r.skipped:>8,} "
            f"{r.adjusted:>8,} {r.target:>9,}" + (f"  ({r.note})" if r.note else "")
        )
    return lines
