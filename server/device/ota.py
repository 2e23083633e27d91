"""OTA / check-version endpoint the firmware calls before connecting (protocol.md §2), plus /healthz.

``POST /xiaozhi/ota/`` answers where to connect (``websocket.url`` and a token when auth is on), the
server time and the firmware the device already runs (we serve no firmware images). ``GET`` on the same
path answers a plain-text notice with the WebSocket URL, like the Python reference server.
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

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"success": False, "message": message}, status=status)


class OtaApp:
    def __init__(
        self, settings: ServerSettings, websocket_url: Callable[[], str], health: Callable[[], dict[str, Any]]
    ):
        self.settings = settings
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
        return web.json_response(
            {
                "server_time": {"timestamp": int(time.time() * 1000), "timezone_offset": -time.timezone // 60},
                "firmware": {"version": str(application.get("version", "")), "url": ""},
                "websocket": {"url": self.websocket_url(), "token": token},
            }
        )

    async def activate(self, request: web.Request) -> web.Response:
        # Devices are accepted without a binding step, so activation always succeeds.
        try:
            parse_connection(request.headers, {})
        except HandshakeError as exc:
            return _error(exc.status, exc.reason)
        return web.json_response({"success": True})

    async def notice(self, request: web.Request) -> web.Response:
        return web.Response(text=f"OTA interface is running; websocket: {self.websocket_url()}\n")

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, **self.health()})
