"""Errors the storage layer raises; each ``str()`` is one line an operator can act on."""

from __future__ import annotations


class StorageError(Exception):
    """Base class for storage failures."""


class StorageUnavailable(StorageError):
    """The backend (PostgreSQL or S3) cannot be reached right now; the operation may be retried."""


class SchemaError(StorageError):
    """The database schema is missing, newer than this program, or was altered."""


class InvalidInput(StorageError, ValueError):
    """The caller passed data that can never be stored (bad role, unsafe id, empty audio, …)."""


class NotFound(StorageError, LookupError):
    """The requested row or object does not exist."""
