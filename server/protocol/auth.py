"""Device tokens in the Python reference server's format (spec §1.1).

``token = base64url(HMAC-SHA256(secret, f"{client_id}|{device_id}|{ts}")) without "=" padding + "." + ts``

with ``ts`` in integer Unix seconds.  Keeping the reference formula means tokens issued by either
server (through the OTA response) are accepted by the other with the same secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from typing import Final

__all__ = [
    "DEFAULT_MAX_AGE_S",
    "MAX_CLOCK_SKEW_S",
    "AuthError",
    "make_token",
    "parse_authorization",
    "verify_token",
]

DEFAULT_MAX_AGE_S: Final = 30 * 86400  # the reference server's default expiry
# Devices set their clock from the OTA response; more than this in the future is not drift.
MAX_CLOCK_SKEW_S: Final = 5 * 60

# 32-byte digest → 43 unpadded base64url chars; ts is plain ASCII digits (int() alone would also
# take "+12", " 12", "1_2" and non-ASCII digits, which no issuer produces).
_TOKEN_RE: Final = re.compile(r"([A-Za-z0-9_-]{43})\.([0-9]{1,12})")
_BEARER_RE: Final = re.compile(r"bearer(?:\s+|$)", re.IGNORECASE)


class AuthError(ValueError):
    """Token refused; ``reason`` is one of the short phrases below, safe to log (never the secret)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _key(secret: str | bytes) -> bytes:
    key = secret.encode("utf-8", "surrogatepass") if isinstance(secret, str) else bytes(secret)
    if not key:
        # An empty key makes every token forgeable by anyone who knows the formula.
        raise ValueError("auth secret must not be empty")
    return key


def _check_ids(client_id: str, device_id: str) -> None:
    if not isinstance(client_id, str) or not isinstance(device_id, str):
        # A missing Client-Id header arrives here as None; the token cannot be for it.
        raise AuthError("client_id and device_id are required")
    # "|" is the field separator: ("a|b", "c") and ("a", "b|c") would sign the same string.
    if "|" in client_id or "|" in device_id:
        raise AuthError("client_id and device_id must not contain '|'")


def _signature(key: bytes, client_id: str, device_id: str, ts: int) -> str:
    # surrogatepass: a lone surrogate (possible in a decoded query string) must fail as a bad
    # signature, not crash the handshake with UnicodeEncodeError.
    message = f"{client_id}|{device_id}|{ts}".encode("utf-8", "surrogatepass")
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def make_token(secret: str | bytes, client_id: str, device_id: str, now: float | None = None) -> str:
    """Issue a token for this (client, device) pair, stamped ``now`` (default: the current time)."""
    key = _key(secret)
    _check_ids(client_id, device_id)
    ts = int(time.time() if now is None else now)
    if ts < 0:
        raise ValueError(f"token timestamp must not be negative, got {ts}")
    return f"{_signature(key, client_id, device_id, ts)}.{ts}"


def verify_token(
    secret: str | bytes,
    token: str,
    client_id: str,
    device_id: str,
    *,
    max_age_s: float = DEFAULT_MAX_AGE_S,
    now: float | None = None,
) -> None:
    """Return if ``token`` was issued for (client_id, device_id) and is still valid; else raise
    :class:`AuthError`.

    The signature is checked before the age, so "expired" is only ever said about a genuine
    token, and it is compared in constant time.
    """
    key = _key(secret)
    match = _TOKEN_RE.fullmatch(token) if isinstance(token, str) else None
    if match is None:
        raise AuthError("malformed token")
    _check_ids(client_id, device_id)
    signature, ts = match.group(1), int(match.group(2))
    expected = _signature(key, client_id, device_id, ts)
    if not hmac.compare_digest(signature.encode("ascii"), expected.encode("ascii")):
        raise AuthError("bad signature")
    current = time.time() if now is None else now
    if ts - current > MAX_CLOCK_SKEW_S:
        raise AuthError("token issued in the future")
    if current - ts > max_age_s:
        raise AuthError("token expired")


def parse_authorization(header_value: str) -> str:
    """Token from an ``Authorization`` header (or the browsers' ``authorization`` query parameter).

    The firmware prefixes ``Bearer `` only when the token has no space; the prefix is removed
    case-insensitively, anything else is returned as sent (minus surrounding whitespace).
    """
    value = header_value.strip()
    match = _BEARER_RE.match(value)
    return value[match.end() :] if match else value
