"""The report file: one JSON line per record that was skipped or stored differently from the source.

Lines are written as they happen (nothing is kept in memory), so a report of an interrupted run is complete
up to the interruption. The file is only created when there is something to report.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import IO, Any, Literal

Action = Literal["skipped", "adjusted"]
EXCERPT_CHARS = 300


def excerpt(value: Any) -> str | None:
    """A printable excerpt of a source record (bytes that are not UTF-8 are shown as \\x.. escapes)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        text = value.decode("utf-8", errors="backslashreplace")
    elif isinstance(value, str):
        text = value.encode("utf-8", errors="backslashreplace").decode("utf-8")
    else:
        text = repr(value)
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


class Report:
    """Counts per action and reason, and the JSON-lines file at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.counts: Counter[Action] = Counter()
        self.reasons: Counter[str] = Counter()
        self._file: IO[str] | None = None

    @property
    def skipped(self) -> int:
        return self.counts["skipped"]

    @property
    def adjusted(self) -> int:
        return self.counts["adjusted"]

    def add(self, action: Action, reason: str, where: dict[str, Any], record: Any = None) -> None:
        self.counts[action] += 1
        self.reasons[reason.split(":", 1)[0]] += 1
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        entry = {"action": action, **where, "reason": reason}
        shown = excerpt(record)
        if shown is not None:
            entry["record"] = shown
        self._file.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")

    def skip(self, reason: str, where: dict[str, Any], record: Any = None) -> None:
        self.add("skipped", reason, where, record)

    def adjust(self, reason: str, where: dict[str, Any], record: Any = None) -> None:
        self.add("adjusted", reason, where, record)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def lines(self) -> list[str]:
        """The summary's report lines."""
        if not self.counts:
            return ["report: nothing skipped or adjusted"]
        out = [f"report: {self.skipped:,} skipped, {self.adjusted:,} adjusted; every one is listed in {self.path}"]
        for reason, n in self.reasons.most_common(8):
            out.append(f"  {n:>8,}  {reason}")
        return out
