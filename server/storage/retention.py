"""Retention (S27): forget conversations older than N days, in the database and in S3.

Order matters for losing nothing that should stay and leaving nothing behind: audio objects of
expired turns are removed first and their rows only once S3 confirmed (an object that could not be
removed keeps its row, so the next run finds it again); then messages; then sessions left without
messages or audio. Deletes run in small batches so a large backlog never holds long locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from server.storage.audio_store import AudioStore

log = logging.getLogger(__name__)


@dataclass
class RetentionReport:
    cutoff: datetime
    dry_run: bool
    messages: int = 0
    sessions: int = 0
    audio_rows: int = 0
    audio_bytes: int = 0
    audio_failed: int = 0
    audio_skipped: int = 0  # rows kept because no audio store is configured
    stale_ended: int = 0  # sessions left 'active' by a crash, now ended

    def lines(self) -> list[str]:
        verb = "would remove" if self.dry_run else "removed"
        out = [
            f"cutoff {self.cutoff:%Y-%m-%d %H:%M:%S %Z}",
            f"{verb} {self.messages} messages",
            f"{verb} {self.sessions} sessions left without messages",
            f"{verb} {self.audio_rows} audio files ({self.audio_bytes / 1e6:.1f} MB) and their rows",
        ]
        if self.audio_failed:
            out.append(f"{self.audio_failed} audio objects could not be removed; kept for the next run")
        if self.stale_ended:
            out.append(f"{'would end' if self.dry_run else 'ended'} {self.stale_ended} sessions left active by a crash")
        if self.audio_skipped:
            out.append(f"{self.audio_skipped} expired audio rows kept: no audio store is configured")
        return out


_EXPIRED_SESSIONS = """
    s.started_at < $1
    AND (s.status <> 'active' OR coalesce(s.last_message_at, s.started_at) < $1)
    AND NOT EXISTS (SELECT 1 FROM conversation_messages m WHERE m.session_id = s.session_id AND m.created_at >= $1)
    AND NOT EXISTS (SELECT 1 FROM audio_files a WHERE a.session_id = s.session_id AND a.created_at >= $1)
"""


class RetentionJob:
    def __init__(
        self,
        pool: asyncpg.Pool,
        audio: AudioStore | None,
        days: int,
        *,
        batch_size: int = 2000,
        stale_after: timedelta = timedelta(hours=1),
    ) -> None:
        if days < 0:
            raise ValueError("retention days must be >= 0 (0 keeps everything)")
        self.pool = pool
        self.audio = audio
        self.days = days
        self.batch_size = batch_size
        # Devices drop idle connections after ~2 minutes, so an 'active' session silent for an hour was
        # left behind by a server that crashed before it could end it.
        self.stale_after = stale_after

    async def run(self, *, dry_run: bool = False, now: datetime | None = None) -> RetentionReport:
        now = now or datetime.now(UTC)
        cutoff = now - timedelta(days=self.days)
        report = RetentionReport(cutoff=cutoff, dry_run=dry_run)
        await self._end_stale_sessions(report, now - self.stale_after)
        if self.days == 0:
            return report
        if dry_run:
            await self._count(report)
            return report
        await self._remove_audio(report)
        await self._remove_messages(report)
        await self._remove_sessions(report)
        log.info("retention: %s", "; ".join(report.lines()))
        return report

    async def _end_stale_sessions(self, report: RetentionReport, silent_since: datetime) -> None:
        stale = "status = 'active' AND coalesce(last_message_at, started_at) < $1"
        if report.dry_run:
            report.stale_ended = await self.pool.fetchval(
                f"SELECT count(*) FROM conversation_sessions WHERE {stale}", silent_since
            )
            return
        result = await self.pool.execute(
            f"""UPDATE conversation_sessions
                SET status = 'ended', ended_at = coalesce(last_message_at, started_at), updated_at = now()
                WHERE {stale}""",
            silent_since,
        )
        report.stale_ended = int(result.split()[-1])

    async def _count(self, report: RetentionReport) -> None:
        cutoff = report.cutoff
        row = await self.pool.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(file_size), 0)::int8 AS bytes FROM audio_files WHERE created_at < $1",
            cutoff,
        )
        if self.audio is None:
            report.audio_skipped = row["n"]
        else:
            report.audio_rows, report.audio_bytes = row["n"], row["bytes"]
        report.messages = await self.pool.fetchval(
            "SELECT count(*) FROM conversation_messages WHERE created_at < $1", cutoff
        )
        report.sessions = await self.pool.fetchval(
            f"SELECT count(*) FROM conversation_sessions s WHERE {_EXPIRED_SESSIONS}"
            + ("" if self.audio else " AND NOT EXISTS (SELECT 1 FROM audio_files a WHERE a.session_id = s.session_id)"),
            cutoff,
        )

    async def _remove_audio(self, report: RetentionReport) -> None:
        after_id = 0
        while True:
            rows = await self.pool.fetch(
                """SELECT id, file_id, bucket_name, object_key, file_size FROM audio_files
                   WHERE created_at < $1 AND id > $2 ORDER BY id LIMIT $3""",
                report.cutoff,
                after_id,
                self.batch_size,
            )
            if not rows:
                return
            after_id = rows[-1]["id"]
            if self.audio is None:
                report.audio_skipped += len(rows)
                continue
            failed: set[str] = set()
            by_bucket: dict[str, list[str]] = {}
            for r in rows:
                by_bucket.setdefault(r["bucket_name"], []).append(r["object_key"])
            for bucket, keys in by_bucket.items():
                if bucket != self.audio.bucket:
                    log.warning("retention: %d audio rows in bucket %s are not ours to delete", len(keys), bucket)
                    failed.update(keys)
                    continue
                failed.update(await self.audio.remove_objects(keys))
            gone = [r for r in rows if r["object_key"] not in failed]
            report.audio_failed += len(rows) - len(gone)
            if gone:
                async with self.pool.acquire() as conn, conn.transaction():
                    deleted = await conn.fetch(
                        "DELETE FROM audio_files WHERE file_id = ANY($1::text[]) RETURNING session_id",
                        [r["file_id"] for r in gone],
                    )
                    await conn.execute(
                        """UPDATE conversation_sessions s SET audio_count =
                               (SELECT count(*) FROM audio_files a WHERE a.session_id = s.session_id)
                           WHERE s.session_id = ANY($1::text[])""",
                        list({d["session_id"] for d in deleted}),
                    )
                report.audio_rows += len(deleted)
                report.audio_bytes += sum(r["file_size"] for r in gone)

    async def _remove_messages(self, report: RetentionReport) -> None:
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                deleted = await conn.fetch(
                    """DELETE FROM conversation_messages WHERE id IN (
                           SELECT id FROM conversation_messages WHERE created_at < $1 ORDER BY created_at LIMIT $2)
                       RETURNING session_id, tool_calls IS NOT NULL AS tools""",
                    report.cutoff,
                    self.batch_size,
                )
                if not deleted:
                    return
                counts: dict[str, list[int]] = {}
                for d in deleted:
                    entry = counts.setdefault(d["session_id"], [0, 0])
                    entry[0] += 1
                    entry[1] += 1 if d["tools"] else 0
                keys = sorted(counts)
                await conn.execute(
                    """UPDATE conversation_sessions s
                       SET message_count = greatest(s.message_count - v.n, 0),
                           tool_call_count = greatest(s.tool_call_count - v.t, 0)
                       FROM unnest($1::text[], $2::int4[], $3::int4[]) AS v(sid, n, t) WHERE s.session_id = v.sid""",
                    keys,
                    [counts[k][0] for k in keys],
                    [counts[k][1] for k in keys],
                )
            report.messages += len(deleted)

    async def _remove_sessions(self, report: RetentionReport) -> None:
        while True:
            result = await self.pool.execute(
                f"""DELETE FROM conversation_sessions WHERE id IN (
                        SELECT s.id FROM conversation_sessions s
                        WHERE {_EXPIRED_SESSIONS}
                          AND NOT EXISTS (SELECT 1 FROM audio_files a WHERE a.session_id = s.session_id)
                        LIMIT $2)""",
                report.cutoff,
                self.batch_size,
            )
            removed = int(result.split()[-1])
            report.sessions += removed
            if removed < self.batch_size:
                return


async def retention_loop(job: RetentionJob, interval_s: float, stop: asyncio.Event) -> None:
    """Run the job now and then every ``interval_s`` until ``stop`` is set; failures are logged, not fatal."""
    while not stop.is_set():
        try:
            await job.run()
        except Exception as exc:  # an outage must not end the schedule
            log.warning("retention run failed (will retry in %.0f s): %s", interval_s, exc)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval_s):
                await stop.wait()
