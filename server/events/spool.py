"""Events that could not be written yet, kept on local disk until PostgreSQL or S3 returns.

One JSON file per write unit (a list of events, often a whole batch), named by a monotonically
increasing number so replay keeps publish order.
Files are written to a temporary name and renamed, so a crash never leaves half an event behind.
Events that can never be written (bad data) go to ``dead/`` with the reason, for an operator.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from server.events.types import Event, from_record, to_record

log = logging.getLogger(__name__)


class SpoolFull(Exception):
    """The spool directory reached its size limit."""


class Spool:
    def __init__(self, directory: Path, *, max_bytes: int = 2 * 1024**3) -> None:
        self.directory = directory
        self.dead_dir = directory / "dead"
        self.max_bytes = max_bytes
        self.dead_dir.mkdir(parents=True, exist_ok=True)
        existing = self.pending()
        self._seq = int(existing[-1].stem) if existing else 0
        self._bytes = sum(p.stat().st_size for p in existing)

    def pending(self) -> list[Path]:
        return sorted(self.directory.glob("*.json"))

    def __len__(self) -> int:
        return len(self.pending())

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def write(self, events: Sequence[Event]) -> Path:
        data = json.dumps([to_record(e) for e in events], ensure_ascii=False).encode()
        if self._bytes + len(data) > self.max_bytes:
            raise SpoolFull(f"spool {self.directory} is full ({self._bytes} bytes)")
        self._seq += 1
        path = self.directory / f"{self._seq:020d}.json"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
        self._bytes += len(data)
        return path

    def read(self, path: Path) -> list[Event]:
        """The events in ``path``; ValueError if the file is unreadable or malformed."""
        try:
            records = json.loads(path.read_bytes())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"unreadable spool file {path.name}: {exc}") from exc
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise ValueError(f"spool file {path.name} does not hold a list of events")
        return [from_record(r) for r in records]

    def remove(self, path: Path) -> None:
        try:
            size = path.stat().st_size
            path.unlink()
            self._bytes = max(0, self._bytes - size)
        except FileNotFoundError:
            pass

    def dead_letter(self, path_or_event: Path | Event, reason: str) -> Path:
        """Keep something that can never be written, with why, where an operator can find it."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        target = self.dead_dir / f"{stamp}-{os.getpid()}-{self._seq}.json"
        payload: dict[str, Any] = {"reason": reason}
        if isinstance(path_or_event, Path):
            try:
                payload["raw"] = path_or_event.read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                payload["raw_error"] = str(exc)
            self.remove(path_or_event)
        else:
            try:
                payload["event"] = to_record(path_or_event)
            except (TypeError, ValueError) as exc:
                payload["event_repr"], payload["record_error"] = repr(path_or_event), str(exc)
        target.write_text(json.dumps(payload, ensure_ascii=False, default=repr), encoding="utf-8")
        log.error("event kept in %s and not written: %s", target, reason)
        return target

    def dead_letters(self) -> list[Path]:
        return sorted(self.dead_dir.glob("*.json"))
