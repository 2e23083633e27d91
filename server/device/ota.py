"""OTA / check-version endpoint the firmware calls before connecting (protocol.md §2), plus /healthz.

``POST /xiaozhi/ota/`` answers where to connect (``websocket.url`` and a token when auth is on), the
server time and the firmware the device already runs (we serve no firmware images), and — with
``server.require_activation`` — an ``activation`` code for a device nobody has bound yet. ``POST …/activate``
answers 200 once bound, 202 while the code waits for an operator, 404 if the device has no live code (it then
re-runs its version check and gets a new one). ``GET`` on the OTA path answers a plain-text notice with the
WebSocket URL, like the Python reference server.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from server.config import ServerSettings
from server.protocol.auth import make_token
from server.protocol.headers import HandshakeError, parse_connection
from server.storage.device_registry import DeviceRegistry

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"success": False, "message": message}, status=status)


class OtaApp:
    def __init__(
        self,
        settings: ServerSettings,
        websocket_url: Callable[[], str],
        health: Callable[[], dict[str, Any]],
        registry: DeviceRegistry | None = None,
    ):
        self.settings = settings
        self.registry = registry
        self.websocket_url = websocket_url
        self.health = health
        self.app = web.Application(client_max_size=MAX_BODY)
        self.app.router.add_post("/xiaozhi/ota/", self.check_version)
        self.app.router.add_post("/xiaozhi/ota", self.check_version)
        self.app.router.add_get("/xiaozhi/ota/", self.notice)
        self.app.router.add_post("/xiaozhi/ota/activate", self.activate)
        self.app.router.add_get("/healthz", self.healthz)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only here
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def check_version(self, request: web.Request) -> web.Response:
        try:
            info = parse_connection(request.headers, {})
        except HandshakeError as exc:
            return _error(exc.status, exc.reason)
        if not info.client_id:
            return _error(400, "Client-Id header is required")
        try:
            raw = await request.read()
            body = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError):
            return _error(400, "body must be the device's system-info JSON")
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "body too large")
        if not isinstance(body, dict):
            return _error(400, "body must be a JSON object")
        application = body.get("application") if isinstance(body.get("application"), dict) else {}
        token = ""
        secret = self.settings.auth.secret.get_secret_value()
        if self.settings.auth.enabled and secret:
            token = make_token(secret, info.client_id, info.device_id)
        log.info("OTA check from %s (%s)", info.device_id, request.headers.get("User-Agent", "?"))
        answer: dict[str, Any] = {
            "server_time": {"timestamp": int(time.time() * 1000), "timezone_offset": -time.timezone // 60},
            "firmware": {"version": str(application.get("version", "")), "url": ""},
            "websocket": {"url": self.websocket_url(), "token": token},
        }
        if self.settings.require_activation and self.registry is not None:
            try:
                pending = await self.registry.pending_activation(info.device_id, info.client_id)
            except Exception as exc:  # database down: the device retries its check with backoff
                log.warning("OTA check from %s: activation state unknown: %s", info.device_id, exc)
                return _error(503, "activation service unavailable, try again later")
            if pending is not None:
                log.info("device %s waits for activation with code %s", info.device_id, pending.code)
                answer["activation"] = {
                    "code": pending.code,
                    "message": f"Activation code {pending.code}: enter it in the xiaozhi console",
                    "challenge": pending.challenge,
                    "timeout_ms": pending.timeout_ms,
                }
        return web.json_response(answer)

    async def activate(self, request: web.Request) -> web.Response:
        try:
            info = parse_connection(request.headers, {})
        except HandshakeError as exc:
            return _error(exc.status, exc.reason)
        if not self.settings.require_activation or self.registry is None:
            return web.json_response({"success": True})  # no binding step: every device is welcome
        try:
            status = await self.registry.activation_status(info.device_id)
        except Exception as exc:
            log.warning("activation poll from %s: %s", info.device_id, exc)
            return _error(503, "activation service unavailable, try again later")
        if status == "activated":
            return web.json_response({"success": True})
        if status == "pending":
            return web.json_response({"success": False, "message": "waiting for the code to be entered"}, status=202)
        return _error(404, "no activation code is waiting for this device: run the version check again")

    async def notice(self, request: web.Request) -> web.Response:
        return web.Response(text=f"OTA interface is running; websocket: {self.websocket_url()}\n")

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, **self.health()})
