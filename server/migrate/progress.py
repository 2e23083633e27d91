"""A progress bar on stderr: redrawn in place on a terminal, a line every few seconds otherwise (logs, CI)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30


class Progress:
    """``with Progress("users", total) as bar: bar.advance(n)``; ``total`` may be unknown (None)."""

    def __init__(
        self, label: str, total: int | None, *, unit: str = "rows", stream: TextIO | None = None, every_s: float = 5.0
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = 0.1 if self.tty else every_s
        self.done = 0
        self.started = time.monotonic()
        self._shown = self.started

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._shown >= self.every_s:
            self._shown = now
            self._draw(final=False)

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def _line(self) -> str:
        rate = f"{self.rate():,.0f} {self.unit}/s"
        if self.total:
            share = min(self.done / self.total, 1.0)
            filled = int(share * WIDTH)
            bar = "#" * filled + "." * (WIDTH - filled)
            return f"{self.label:<14} [{bar}] {self.done:,}/{self.total:,} {share:4.0%}  {rate}"
        return f"{self.label:<14} {self.done:,} {self.unit}  {rate}"

    def _draw(self, *, final: bool) -> None:
        if self.tty:
            self.stream.write("\r" + self._line() + ("\n" if final else ""))
        else:
            self.stream.write(self._line() + "\n")
        self.stream.flush()

    def finish(self) -> None:
        self._draw(final=True)
