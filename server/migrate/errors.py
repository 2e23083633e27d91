"""Expected failures of a migration: each ``str()`` is one line an operator can act on."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # a source or the target unreachable, a refused login, a lost connection
EXIT_USAGE = 2  # bad flags
EXIT_INCOMPLETE = 3  # finished, but records were skipped (see the report) / verify found differences


class MigrationError(Exception):
    """A migration cannot start or go on; nothing half-written is left (every batch is its own transaction)."""

    exit_code = EXIT_FAILED


class UsageError(MigrationError):
    exit_code = EXIT_USAGE
