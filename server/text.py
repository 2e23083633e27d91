"""Text for one-line messages (errors, status lines): whitespace collapsed, long text cut with an ellipsis."""

from __future__ import annotations


def one_line(text: str, limit: int | None = 200) -> str:
    """``text`` on one line; longer than ``limit`` characters (None: no limit) is cut and ends in "…"."""
    flat = " ".join(text.split())
    return flat if limit is None or len(flat) <= limit else flat[: limit - 1] + "…"
