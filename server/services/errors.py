"""Errors raised by the embedded service launchers."""

from __future__ import annotations

from pathlib import Path

from server.text import one_line

# How much of a server log is attached to an error: enough to see the real
# cause (postgres prints a FATAL line plus a HINT, weed a few stack lines)
# without dumping megabytes into a traceback.
LOG_TAIL_LINES = 30


def tail_text(path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last `lines` lines of a log file, or "" if it cannot be read."""
    if path is None:
        return ""
    try:
        with path.open("rb") as handle:
            # Logs can grow large over a long life; only the end matters here.
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


class ServiceStartError(RuntimeError):
    """An embedded service (postgres, s3) could not be started.

    ``str(error)`` is a single line naming the service, the cause and the log file,
    suitable for a CLI or a status bar; ``details`` carries the tail of the server
    log for whoever wants to dig further.
    """

    def __init__(self, name: str, message: str, log_path: Path | None = None, details: str | None = None) -> None:
        self.name = name
        self.message = one_line(message, None)
        self.log_path = log_path
        # None: take the tail of the log; callers that know which part of an
        # appended-to log belongs to this attempt pass it themselves.
        self.details = tail_text(log_path) if details is None else details
        super().__init__(self._summary())

    def _summary(self) -> str:
        where = f" (log: {self.log_path})" if self.log_path is not None else ""
        return f"{self.name} failed to start: {self.message}{where}"

    def __str__(self) -> str:
        return self._summary()
