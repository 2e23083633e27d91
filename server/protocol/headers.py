"""Who is connecting: the WebSocket handshake's headers, with the browsers' query fallback (spec §1.1).

The firmware sends ``Device-Id``, ``Client-Id``, ``Protocol-Version`` and ``Authorization`` headers.
Browsers cannot set headers on a WebSocket, so (like the Python reference server) the same values
are also read from the query string: ``device-id``, ``client-id``, ``authorization`` and
``protocol-version``.  A non-empty header wins over the query parameter.

Refusals are :class:`HandshakeError` with the HTTP status to answer the upgrade request with.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from server.protocol.auth import parse_authorization
from server.protocol.framing import SUPPORTED_VERSIONS

__all__ = ["MAX_ID_CHARS", "ConnectionInfo", "HandshakeError", "normalize_device_id", "parse_connection"]

# Ids end up in logs, database rows and object keys; a MAC is 17 chars, a UUID 36.
MAX_ID_CHARS: Final = 128
_MAC_RE: Final = re.compile(r"[0-9A-Fa-f]{2}([:-])(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}")
_DIGITS_RE: Final = re.compile(r"[0-9]+")


class HandshakeError(ValueError):
    """Refuse the WebSocket upgrade with HTTP ``status``; ``reason`` is one line for the body/log."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """``protocol_version`` selects the binary framing (:mod:`server.protocol.framing`) for the
    whole connection; ``token`` is without its ``Bearer`` prefix, None when none was sent."""

    device_id: str
    client_id: str | None = None
    protocol_version: int = 1
    token: str | None = None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        # Plain dicts are case-sensitive; HTTP header names are not.
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def _query(query: Mapping[str, list[str] | str], name: str) -> str | None:
    value = query.get(name)
    if isinstance(value, list | tuple):
        # parse_qs gives lists; a repeated parameter counts by its first occurrence.
        value = value[0] if value else None
    return value if isinstance(value, str) else None


def _lookup(
    headers: Mapping[str, str], query: Mapping[str, list[str] | str], header_name: str, query_name: str
) -> str | None:
    for value in (_header(headers, header_name), _query(query, query_name)):
        if value is not None and value.strip():
            return value.strip()
    return None


def _has_control_chars(value: str) -> bool:
    # Cc covers C0, DEL and C1; such ids would forge log lines or break storage keys.
    return any(unicodedata.category(char) == "Cc" for char in value)


def _check_id(value: str, what: str) -> None:
    if len(value) > MAX_ID_CHARS:
        raise HandshakeError(400, f"{what} longer than {MAX_ID_CHARS} characters")
    if _has_control_chars(value):
        raise HandshakeError(400, f"{what} contains control characters")


def normalize_device_id(device_id: str) -> str:
    """Lowercase MAC-looking ids (``AA:BB:..`` or ``AA-BB-..``): the firmware sends lowercase, and
    hand-typed ids from test pages must map to the same device. Other ids are kept as sent."""
    return device_id.lower() if _MAC_RE.fullmatch(device_id) else device_id


def _parse_protocol_version(value: str | None) -> int:
    if value is None:
        return 1  # the firmware default
    if not _DIGITS_RE.fullmatch(value):
        raise HandshakeError(400, f"Protocol-Version must be an integer, got {value[:20]!r}")
    # Length first: int() refuses strings over 4300 digits, and no valid version is long.
    if len(value) > 9 or int(value) not in SUPPORTED_VERSIONS:
        raise HandshakeError(400, f"unsupported Protocol-Version {value[:20]} (supported: 1, 2, 3)")
    return int(value)


def parse_connection(headers: Mapping[str, str], query: Mapping[str, list[str] | str]) -> ConnectionInfo:
    """Read the connecting device's identity from the upgrade request.

    Values are stripped of surrounding whitespace; an empty value counts as absent.
    """
    device_id = _lookup(headers, query, "Device-Id", "device-id")
    if device_id is None:
        raise HandshakeError(400, "missing Device-Id header (or device-id query parameter)")
    _check_id(device_id, "Device-Id")
    client_id = _lookup(headers, query, "Client-Id", "client-id")
    if client_id is not None:
        _check_id(client_id, "Client-Id")
    authorization = _lookup(headers, query, "Authorization", "authorization")
    token = parse_authorization(authorization) if authorization is not None else None
    return ConnectionInfo(
        device_id=normalize_device_id(device_id),
        client_id=client_id,
        protocol_version=_parse_protocol_version(_lookup(headers, query, "Protocol-Version", "protocol-version")),
        token=token or None,
    )
