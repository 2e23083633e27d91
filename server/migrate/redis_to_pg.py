"""``xiaozhi migrate redis-to-pg``: conversation history and system prompts from Redis (S24, S25).

Keys are read one after another, each in chunks; records are validated, given their session and their
deterministic id, and gathered into batches of ``batch_size`` messages across keys. Each key belongs to one
writer lane (by device); lanes write in parallel on their own connections, each lane strictly in order, and
reading goes on while they write.
"""

from __future__ import annotations

import asyncio
import sys
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TextIO

from server.migrate.pg_target import Target, count_rows, on_target
from server.migrate.progress import Progress
from server.migrate.redis_source import RedisSource, Refused, SourceKey, Survey, decode_message
from server.migrate.redis_writer import ConversationWriter, KeySlice, WriteCounts
from server.migrate.report import Report
from server.migrate.sessions_split import SessionSplitter, list_session_id, message_id
from server.storage import schema

PROMPT_BATCH = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class RedisResult:
    survey: Survey = field(default_factory=Survey)
    keys_read: int = 0
    keys_skipped: int = 0
    records_read: int = 0
    records_skipped: int = 0  # refused by validation (also in the report)
    prompts_skipped: int = 0
    counts: WriteCounts = field(default_factory=WriteCounts)
    target: dict[str, int] = field(default_factory=dict)
    deferred: list[str] = field(default_factory=list)  # indexes and constraints dropped for the load, built after it

    @property
    def skipped(self) -> int:
        return self.keys_skipped + self.records_skipped + self.prompts_skipped + self.counts.messages_refused


def _time(ns: int) -> datetime:
    # timedelta keeps whole microseconds exactly (a float division would round differently near 2**53)
    return _EPOCH + timedelta(microseconds=ns // 1000)


async def key_records(
    source: RedisSource,
    skey: SourceKey,
    *,
    gap_ns: int,
    chunk: int,
    on_refused: Callable[[str, str, str, int, bytes], None],
) -> AsyncIterator[tuple[KeySlice, int]]:
    """The key's valid records, chunk by chunk, as slices (and how many source records each chunk read)."""
    name = skey.name
    device = skey.device_id
    pos = 0
    if skey.kind == "dialogue":
        splitter = SessionSplitter(device, gap_ns)
        ident = device.encode("utf-8") + b"\0"
        async for rows in source.dialogue(skey.key, chunk):
            piece = KeySlice(name, "score")
            for member, score in rows:
                ns = int(score)
                try:
                    role, content, multi, tools, tool_call_id, meta, _ = decode_message(member)
                except Refused as exc:
                    on_refused(str(exc), name, "score", ns, member)
                    continue
                pos += 1
                mid = message_id(ident + str(ns).encode() + b"\0" + member, ns // 10**6)
                piece.records.append(
                    (
                        splitter.session_for(ns),
                        device,
                        mid,
                        pos,
                        role,
                        content,
                        multi,
                        tools,
                        tool_call_id,
                        meta,
                        _time(ns),
                    )
                )
                piece.locs.append(ns)
                piece.raws.append(member)
            yield piece, len(rows)
    else:
        session = list_session_id(skey.key)
        ident = skey.key + b"\0"
        last_ms: int | None = None
        async for start, rows in source.list_elements(skey.key, chunk):
            piece = KeySlice(name, "index")
            for offset, element in enumerate(rows):
                index = start + offset
                try:
                    role, content, multi, tools, tool_call_id, meta, stamp = decode_message(
                        element, with_timestamp=True
                    )
                except Refused as exc:
                    on_refused(str(exc), name, "index", index, element)
                    continue
                # no timestamp: the previous element's time keeps the order (the run's time for the first)
                ms = stamp if stamp is not None else last_ms
                if ms is None:
                    ms = int(datetime.now(UTC).timestamp() * 1000)
                last_ms = ms
                pos += 1
                piece.records.append((
                    session, device, message_id(ident + str(index).encode() + b"\0" + element, stamp or 0),
                    pos, role, content, multi, tools, tool_call_id, meta, _time(ms * 10**6),
                ))  # fmt: skip
                piece.locs.append(index)
                piece.raws.append(element)
            yield piece, len(rows)


class Lane:
    """One writer connection and the batches bound for it. A key always goes to the same lane (by device),
    so a session's batches stay in order on one connection while lanes write in parallel."""

    def __init__(self, writer: ConversationWriter, batch_size: int) -> None:
        self.writer = writer
        self.batch_size = batch_size
        self.batch: list[KeySlice] = []
        self.records = 0
        self.pending: asyncio.Task[None] | None = None

    async def add(self, piece: KeySlice) -> None:
        self.batch.append(piece)
        self.records += len(piece.records)
        if self.records >= self.batch_size:
            await self.flush()

    async def settle(self) -> None:
        if self.pending is not None:
            task, self.pending = self.pending, None
            await task

    async def flush(self) -> None:
        """Start writing the gathered batch once the previous one is written (one batch in flight)."""
        await self.settle()
        if self.batch:
            self.pending = asyncio.create_task(self.writer.write(self.batch))
            self.batch, self.records = [], 0

    async def cancel(self) -> None:
        if self.pending is not None:
            self.pending.cancel()
            await asyncio.gather(self.pending, return_exceptions=True)
            self.pending = None


async def migrate_redis(
    source: RedisSource,
    target: Target,
    *,
    batch_size: int,
    gap_ns: int,
    dry_run: bool,
    report: Report,
    writers: int = 2,
    progress_stream: TextIO | None = None,
) -> RedisResult:
    """``writers`` connections write in parallel: PostgreSQL's share of the work (indexes, the trigram index
    above all) is the larger one, and one backend per core keeps both cores busy."""
    result = RedisResult()
    result.survey = await source.survey()
    conns = [target.conn] + [await target.connect_more() for _ in range(max(1, writers) - 1)]
    lanes = [
        Lane(
            ConversationWriter(c, report, dry_run=dry_run, schema_missing=target.schema_missing, counts=result.counts),
            batch_size,
        )
        for c in conns
    ]
    prompts: dict[str, str] = {}

    def refused(reason: str, key: str, locator: str, loc: int, raw: bytes) -> None:
        result.records_skipped += 1
        report.skip(reason, {"key": key, locator: loc}, raw)

    def bad_key(key: bytes, reason: str) -> None:
        result.keys_skipped += 1
        report.skip(reason, {"key": key.decode("utf-8", "backslashreplace")})

    async def flush_prompts() -> None:
        await lanes[0].settle()
        await lanes[0].writer.write_prompts(sorted(prompts.items()))
        prompts.clear()

    chunk = max(100, min(batch_size, 5000))
    if not dry_run:
        result.deferred = await schema.drop_deferrable(target.conn, "conversation_messages")
        for lane in lanes:
            lane.writer.fresh = bool(result.deferred)
    built = False
    try:
        with Progress("messages", result.survey.records, unit="msgs", stream=progress_stream) as bar:
            async for skey in source.keys(bad_key):
                result.keys_read += 1
                if skey.kind == "prompt":
                    text = _prompt(await source.get(skey.key), skey, report)
                    if text is None:
                        result.prompts_skipped += 1
                    else:
                        prompts[skey.device_id] = text
                        if len(prompts) >= PROMPT_BATCH:
                            await flush_prompts()
                    continue
                lane = lanes[zlib.crc32(skey.device_id.encode("utf-8")) % len(lanes)]
                async for piece, n in key_records(source, skey, gap_ns=gap_ns, chunk=chunk, on_refused=refused):
                    result.records_read += n
                    bar.advance(n)
                    await lane.add(piece)
            for lane in lanes:
                await lane.flush()
            for lane in lanes:
                await lane.settle()
            if prompts:
                await flush_prompts()
        if result.deferred:
            print("building the indexes over the loaded messages …", file=progress_stream or sys.stderr)
            await on_target(schema.build_missing(*conns), during=" building the indexes")
        built = True
    finally:
        for lane in lanes:
            await lane.cancel()
        for conn in conns[1:]:
            await conn.close()
        if result.deferred and not built:
            print(
                "note: the messages' indexes and foreign key were dropped for this bulk load and are not built yet; "
                "re-running the same command, 'xiaozhi db upgrade' or the server's start builds them",
                file=progress_stream or sys.stderr,
            )
    for table in ("conversation_sessions", "conversation_messages", "system_prompts"):
        now = 0 if target.schema_missing else await count_rows(target.conn, table)
        if dry_run:
            now += {"conversation_sessions": result.counts.sessions_new,
                    "conversation_messages": result.counts.messages_new,
                    "system_prompts": result.counts.prompts_new}[table]  # fmt: skip
        result.target[table] = now
    return result


def _prompt(raw: bytes | None, skey: SourceKey, report: Report) -> str | None:
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        report.skip(f"system prompt is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
                    {"key": skey.name}, raw)  # fmt: skip
        return None
    if "\x00" in text:
        report.skip(
            "system prompt contains a NUL character, which PostgreSQL text cannot hold", {"key": skey.name}, raw
        )
        return None
    return text


def summary_lines(result: RedisResult, *, dry_run: bool) -> list[str]:
    s, c = result.survey, result.counts
    new = "would insert" if dry_run else "inserted"
    return [
        f"source: {s.keys['dialogue']:,} dialogue sets, {s.keys['list']:,} conversation lists, "
        f"{s.keys['prompt']:,} system prompts; {s.records:,} messages",
        f"messages: {result.records_read:,} read, {c.messages_new:,} {new}, {c.messages_present:,} already there, "
        f"{result.records_skipped + c.messages_refused:,} skipped",
        f"sessions: {c.sessions_new:,} {'would be created' if dry_run else 'created'}",
        f"system prompts: {c.prompts_new:,} {new}, {c.prompts_updated:,} updated, {c.prompts_unchanged:,} unchanged, "
        f"{result.prompts_skipped:,} skipped",
        f"keys skipped: {result.keys_skipped:,}",
        *(
            [f"indexes and foreign key: {len(result.deferred)} built once after the load (the target held no messages)"]
            if result.deferred
            else []
        ),
        "target: " + ", ".join(f"{t} {n:,}" for t, n in result.target.items()),
    ]
