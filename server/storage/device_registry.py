"""Device activation (protocol.md §2) on the ``devices`` table.

With ``server.require_activation`` on, an unknown or unbound device gets a six-digit code in its OTA answer; it
speaks and shows the code and polls ``/activate`` (202 while pending). An operator binds it by entering the code
(``xiaozhi devices activate CODE``); the next poll gets 200 and the device may connect. Until then its WebSocket
handshake is refused with 401. A code lives ``CODE_LIFETIME``; an expired one is replaced at the next OTA check.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import asyncpg

from server.storage.errors import InvalidInput, NotFound
from server.storage.models import MAX_DEVICE_ID, check_id

CODE_LIFETIME = timedelta(minutes=10)
CODE_DIGITS = 6


@dataclass(frozen=True, slots=True)
class PendingActivation:
    device_id: str
    code: str
    challenge: str
    expires_at: datetime

    @property
    def timeout_ms(self) -> int:
        return int(CODE_LIFETIME.total_seconds() * 1000)


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    device_id: str
    activated: bool
    client_id: str | None
    activation_code: str | None
    activation_expires_at: datetime | None
    activated_at: datetime | None
    last_active_at: datetime | None


class DeviceRegistry:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def is_activated(self, device_id: str) -> bool:
        return bool(await self.pool.fetchval("SELECT activated FROM devices WHERE device_code = $1", device_id))

    async def pending_activation(self, device_id: str, client_id: str | None = None) -> PendingActivation | None:
        """None if the device is bound; otherwise its current code (a new one if it had none or it expired)."""
        check_id("device_id", device_id, MAX_DEVICE_ID)
        for _ in range(5):  # a new code may collide with another device's live one: draw again
            code = "".join(secrets.choice("0123456789") for _ in range(CODE_DIGITS))
            challenge = secrets.token_hex(16)
            try:
                row = await self.pool.fetchrow(_ISSUE, device_id, code, challenge, CODE_LIFETIME, client_id)
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name == "devices_activation_code_idx":
                    continue
                raise
            assert row is not None
            if row["activated"]:
                return None
            return PendingActivation(device_id, row["activation_code"], row["challenge"], row["activation_expires_at"])
        raise RuntimeError("could not draw a free activation code")

    async def activation_status(self, device_id: str) -> Literal["activated", "pending", "unknown"]:
        row = await self.pool.fetchrow(
            "SELECT activated, activation_code IS NOT NULL AND activation_expires_at > now() AS live "
            "FROM devices WHERE device_code = $1",
            device_id,
        )
        if row is None:
            return "unknown"
        if row["activated"]:
            return "activated"
        return "pending" if row["live"] else "unknown"

    async def activate(self, code: str) -> str:
        """Bind the device that was given ``code``; returns its device id."""
        code = code.strip()
        if not (code.isdigit() and len(code) == CODE_DIGITS):
            raise InvalidInput(f"an activation code is {CODE_DIGITS} digits, got {code!r}")
        device_id = await self.pool.fetchval(
            """UPDATE devices SET activated = true, activated_at = now(), activation_code = NULL,
                   activation_expires_at = NULL
               WHERE activation_code = $1 AND activation_expires_at > now() AND NOT activated
               RETURNING device_code""",
            code,
        )
        if device_id is None:
            raise NotFound(f"no device is waiting with activation code {code} (wrong, expired or already used)")
        return device_id

    async def deactivate(self, device_id: str) -> None:
        status = await self.pool.execute(
            "UPDATE devices SET activated = false, activated_at = NULL WHERE device_code = $1", device_id
        )
        if status == "UPDATE 0":
            raise NotFound(f"no device {device_id!r}")

    async def list(self, *, pending_only: bool = False) -> list[DeviceRecord]:
        rows = await self.pool.fetch(
            f"""SELECT device_code, activated, client_id, activation_code, activation_expires_at, activated_at,
                       last_active_at
                FROM devices {"WHERE NOT activated AND activation_expires_at > now()" if pending_only else ""}
                ORDER BY device_code"""
        )
        return [
            DeviceRecord(r["device_code"], r["activated"], r["client_id"], r["activation_code"],
                         r["activation_expires_at"], r["activated_at"], r["last_active_at"])
            for r in rows
        ]  # fmt: skip


# Insert the device, or keep its live code, or give it a new one; a bound device is returned unchanged.
_ISSUE = """
INSERT INTO devices (device_code, activation_code, challenge, activation_expires_at, client_id)
VALUES ($1, $2, $3, now() + $4::interval, $5)
ON CONFLICT (device_code) DO UPDATE SET
    activation_code = CASE WHEN devices.activated THEN devices.activation_code
                           WHEN devices.activation_code IS NOT NULL AND devices.activation_expires_at > now()
                           THEN devices.activation_code ELSE EXCLUDED.activation_code END,
    challenge = CASE WHEN devices.activated THEN devices.challenge
                     WHEN devices.activation_code IS NOT NULL AND devices.activation_expires_at > now()
                     THEN devices.challenge ELSE EXCLUDED.challenge END,
    activation_expires_at = CASE WHEN devices.activated THEN devices.activation_expires_at
                                 WHEN devices.activation_code IS NOT NULL AND devices.activation_expires_at > now()
                                 THEN devices.activation_expires_at ELSE EXCLUDED.activation_expires_at END,
    client_id = COALESCE(EXCLUDED.client_id, devices.client_id),
    last_active_at = now()
RETURNING activated, activation_code, challenge, activation_expires_at
"""
