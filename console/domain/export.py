"""Export what the current filter shows: JSON (lossless, with audio object keys), CSV (one row per
message) or a zip of the audio. Progress is reported per session; cancelling removes the partial file."""

from __future__ import annotations

import asyncio
import csv
import json
import zipfile
from collections.abc import Callable
from dataclasses import asdict
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

from console.domain.jobs import call_in_thread
from console.domain.session_query import SessionPager, SessionQuery
from server.storage.audio_store import AudioStore
from server.storage.conversation_store import ConversationStore
from server.storage.models import AudioFile

Format = Literal["json", "csv", "zip"]
Progress = Callable[[int, int], None]  # done, total


class ExportCancelled(Exception):
    pass


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _record(obj: Any) -> dict[str, Any]:
    return {k: _plain(v) for k, v in asdict(obj).items()}


async def session_ids(store: ConversationStore, query: SessionQuery) -> list[str]:
    pager = SessionPager(store, query, page_size=1000)
    ids: list[str] = []
    while not pager.exhausted:
        ids += [s.session_id for s in await pager.next_page()]
    return ids


async def export(
    store: ConversationStore,
    audio: AudioStore | None,
    query: SessionQuery,
    path: Path,
    fmt: Format,
    progress: Progress | None = None,
    cancelled: asyncio.Event | None = None,
) -> int:
    """Write the export to ``path``; returns the number of sessions written."""
    ids = await session_ids(store, query)
    tmp = path.with_name(path.name + ".part")
    try:
        if fmt == "zip":
            if audio is None:
                raise RuntimeError("audio storage (S3) is not connected: there is no audio to export")
            await _zip(store, audio, ids, tmp, progress, cancelled)
        else:
            with tmp.open("w", encoding="utf-8", newline="") as fh:
                await (_json if fmt == "json" else _csv)(store, ids, fh, progress, cancelled)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(ids)


def _check(cancelled: asyncio.Event | None) -> None:
    if cancelled is not None and cancelled.is_set():
        raise ExportCancelled("export cancelled")


async def _json(store: ConversationStore, ids: list[str], fh: Any, progress: Progress | None,
                cancelled: asyncio.Event | None) -> None:  # fmt: skip
    fh.write('{"format": "xiaozhi-console-export", "version": 1, "sessions": [\n')
    for n, sid in enumerate(ids):
        _check(cancelled)
        info = await store.get_session(sid)
        messages = await store.timeline(sid)
        files = await store.list_audio_files(session_id=sid, limit=100_000)
        by_id = {a.file_id: a for a in files}
        record = _record(info)
        record["messages"] = []
        for m in messages:
            item = _record(m)
            row = by_id.get(m.audio_file_id or "")
            item["audio"] = None if row is None else _audio_ref(row)
            record["messages"].append(item)
        record["audio_files"] = [_record(a) for a in files]
        fh.write(("," if n else "") + json.dumps(record, ensure_ascii=False) + "\n")
        if progress is not None:
            progress(n + 1, len(ids))
    fh.write("]}\n")


def _audio_ref(row: AudioFile) -> dict[str, Any]:
    return {"file_id": row.file_id, "bucket": row.bucket_name, "object_key": row.object_key,
            "file_type": row.file_type, "duration_ms": row.duration_ms, "file_size": row.file_size}  # fmt: skip


CSV_COLUMNS = ("session_id", "device_id", "agent_id", "sequence_num", "created_at", "role", "content",
               "tool_calls", "tool_call_id", "message_id", "audio_object_key", "audio_duration_ms")  # fmt: skip


async def _csv(store: ConversationStore, ids: list[str], fh: Any, progress: Progress | None,
               cancelled: asyncio.Event | None) -> None:  # fmt: skip
    writer = csv.writer(fh)
    writer.writerow(CSV_COLUMNS)
    for n, sid in enumerate(ids):
        _check(cancelled)
        info = await store.get_session(sid)
        files = {a.file_id: a for a in await store.list_audio_files(session_id=sid, limit=100_000)}
        for m in await store.timeline(sid):
            row = files.get(m.audio_file_id or "")
            writer.writerow([
                sid, m.device_id, info.agent_id or "", m.sequence_num, m.created_at.isoformat(), m.role, m.content,
                json.dumps(m.tool_calls, ensure_ascii=False) if m.tool_calls else "", m.tool_call_id or "",
                m.message_id, row.object_key if row else "", row.duration_ms if row else "",
            ])  # fmt: skip
        if progress is not None:
            progress(n + 1, len(ids))


async def _zip(store: ConversationStore, audio: AudioStore, ids: list[str], tmp: Path, progress: Progress | None,
               cancelled: asyncio.Event | None) -> None:  # fmt: skip
    archive = zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED)  # opus is compressed already
    try:
        for n, sid in enumerate(ids):
            _check(cancelled)
            for row in await store.list_audio_files(session_id=sid, limit=100_000):
                data = await audio.get_object(row.bucket_name, row.object_key)
                await call_in_thread(archive.writestr, row.object_key, data)
            if progress is not None:
                progress(n + 1, len(ids))
    finally:
        archive.close()
