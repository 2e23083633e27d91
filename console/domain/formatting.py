"""How times, durations and sizes read in the console."""

from __future__ import annotations

from datetime import datetime, timedelta


def local_time(when: datetime | None, *, seconds: bool = True) -> str:
    if when is None:
        return ""
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def clock_time(when: datetime | None) -> str:
    return "" if when is None else when.astimezone().strftime("%H:%M:%S")


def duration(span: timedelta | float | None) -> str:
    """``1:05:03``, ``4:07`` or ``12 s``; empty when unknown."""
    if span is None:
        return ""
    total = span.total_seconds() if isinstance(span, timedelta) else float(span)
    total = max(0, round(total))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    if minutes:
        return f"{minutes}:{secs:02d}"
    return f"{secs} s"


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"
