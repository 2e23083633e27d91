"""The device server: xiaozhi WebSocket endpoint, OTA HTTP endpoint, batched VAD, storage wiring.

Bad handshakes are refused before the upgrade (400 without Device-Id, 401 for a bad token). One task
per connection; one task per uplink worker hands that worker its devices' new packets every ``vad_tick_ms``
(the workers' ticks staggered over the period), so hundreds of streaming devices cost one batched onnx call
per worker and tick, in processes of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import json
import logging
import socket
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from server.config import ConfigError, Settings
from server.device.connection import DeviceConnection
from server.device.context import ServerContext
from server.device.ota import OtaApp
from server.live.feed import LiveFeed
from server.live.pg_relay import PgLiveRelay
from server.pipeline.registry import PipelineProviders, build_pipeline
from server.pipeline.speech import SpeechRenderer, make_speech
from server.pipeline.uplink import UplinkAnalyzer
from server.protocol.auth import AuthError, parse_authorization, verify_token
from server.protocol.headers import ConnectionInfo, HandshakeError, parse_connection
from server.runtime import StorageRuntime
from server.storage.device_registry import DeviceRegistry

log = logging.getLogger(__name__)
WS_PATH = "/xiaozhi/v1"
LIVE_PATH = "/xiaozhi/live"


class DeviceServer:
    def __init__(
        self,
        settings: Settings,
        *,
        runtime: StorageRuntime | None = None,
        live: LiveFeed | None = None,
        providers: PipelineProviders | None = None,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.live = live or LiveFeed(server_name=socket.gethostname())
        self._providers = providers
        self.ctx: ServerContext | None = None
        self._ws: Server | None = None
        self._ota: OtaApp | None = None
        self._vad_tasks: list[asyncio.Task[None]] = []
        self._warmup: asyncio.Task[None] | None = None
        self._infos: dict[int, ConnectionInfo] = {}
        self._live_filters: dict[int, tuple[str | None, bool]] = {}
        self._relay: PgLiveRelay | None = None
        self.registry: DeviceRegistry | None = None
        self.ws_port = 0

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.settings.server
        self.registry = DeviceRegistry(self.runtime.pool) if self.runtime and self.runtime.pool else None
        if cfg.require_activation and self.registry is None:
            raise ConfigError("server.require_activation needs the database (devices are bound in its devices table)")
        providers = self._providers or build_pipeline(_pipeline_root(self.settings))
        self.ctx = ServerContext(
            settings=cfg,
            providers=providers,
            vad=UplinkAnalyzer(workers=cfg.uplink_workers),
            live=self.live,
            speech=make_speech(providers.tts, cfg.downlink_sample_rate, cfg.frame_duration_ms, cfg.speech_workers),
            bus=self.runtime.bus if self.runtime else None,
            store=self.runtime.store if self.runtime else None,
            context_messages=self.settings.conversation.context_messages,
            server_name=self.live.server_name,
        )
        # Modules and objects loaded at start live forever: keep them out of the collector's full passes (measured:
        # the longest GC pause under load fell from 90 ms to 14 ms). Collect now, before any device connects: done
        # later (after the models load) it stalled the loop for up to a second under load.
        gc.collect()
        gc.freeze()
        self._ws = await serve(
            self._handle,
            cfg.host,
            cfg.port,
            process_request=self._process_request,
            max_size=cfg.max_frame_bytes,
            max_queue=64,
            ping_interval=30,
            ping_timeout=30,
        )
        self.ws_port = next(iter(self._ws.sockets)).getsockname()[1]
        self._ota = OtaApp(cfg, self.websocket_url, self.health, self.registry)
        await self._ota.start(cfg.host, cfg.http_port)
        shards = self.ctx.vad.shards
        self._vad_tasks = [asyncio.create_task(self._vad_loop(i, shards), name=f"vad-{i}") for i in range(shards)]
        self._warmup = asyncio.create_task(self._warm_up(providers, self.ctx.speech), name="warm-up")
        if self.runtime is not None:
            self._relay = PgLiveRelay(self.runtime.settings.database, self.live)
            await self._relay.start()
        log.info("device server: %s (OTA %s)", self.websocket_url(), self.ota_url())

    async def _warm_up(self, providers: PipelineProviders, speech: SpeechRenderer) -> None:
        """Load models now, so the first device does not wait for them (whisper: ~0.5 s, more on a busy box)."""
        assert self.ctx is not None
        for what, start in (("uplink analysis", self.ctx.vad.start), ("speech synthesis", speech.start)):
            try:
                await start()
            except Exception as exc:
                log.warning("%s not ready at start: %s", what, exc)
        load = getattr(providers.asr, "load", None)
        if load is not None:
            try:
                await load()
            except Exception as exc:
                log.warning("speech recognition model not loaded at start: %s", exc)
        gc.freeze()  # what the model loads created lives forever too (no collection here: devices may be connected)

    async def ready(self) -> None:
        """Wait until the models are loaded and the worker processes run (``start`` returns before that)."""
        if self._warmup is not None:
            await asyncio.shield(self._warmup)

    async def stop(self) -> None:
        if self._relay is not None:
            await self._relay.stop()
        if self._ws is not None:
            self._ws.close(close_connections=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.wait_closed(), 10)
            self._ws = None
        if self._warmup is not None:
            self._warmup.cancel()
        for task in self._vad_tasks:
            task.cancel()
        for task in self._vad_tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._vad_tasks = []
        if self._ota is not None:
            await self._ota.stop()
        if self.ctx is not None:
            await self.ctx.vad.stop()
            await self.ctx.speech.close()
            if self._providers is None:
                await self.ctx.providers.close()

    # ---- addresses ------------------------------------------------------------------------------

    def _public_host(self) -> str:
        cfg = self.settings.server
        if cfg.public_host:
            return cfg.public_host
        if cfg.host not in ("0.0.0.0", "::", ""):
            return cfg.host
        return _local_address()

    def websocket_url(self) -> str:
        return f"ws://{self._public_host()}:{self.ws_port}{WS_PATH}/"

    def ota_url(self) -> str:
        return f"http://{self._public_host()}:{self._ota.port if self._ota else 0}/xiaozhi/ota/"

    def health(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.ctx.stats() if self.ctx else {}
        if self.runtime and self.runtime.bus:
            stats["spooled_events"] = len(self.runtime.bus.spool)
        return stats

    # ---- operators ------------------------------------------------------------------------------

    def devices(self) -> list[dict[str, Any]]:
        """The connected devices of this server, oldest connection first."""
        assert self.ctx is not None
        return [conn.summary() for conn in self.ctx.connections.values()]

    async def command(self, device_id: str, command: str, message: str = "") -> None:
        """Send ``alert``/``reboot``/``goodbye`` to every connection of ``device_id`` (LookupError if none)."""
        assert self.ctx is not None
        targets = [c for c in self.ctx.connections.values() if c.device_id == device_id]
        if not targets:
            raise LookupError(f"device {device_id} is not connected to this server")
        for conn in targets:
            await conn.operator_command(command, message)

    # ---- handshake and connections --------------------------------------------------------------

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path.rstrip("/") == LIVE_PATH:
            return self._authorize_live(connection, request, parse_qs(url.query))
        if url.path.rstrip("/") != WS_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, f"the device endpoint is {WS_PATH}/\n")
        try:
            info = parse_connection(request.headers, parse_qs(url.query))
        except HandshakeError as exc:
            return connection.respond(exc.status, exc.reason + "\n")
        auth = self.settings.server.auth
        if auth.enabled and info.device_id not in auth.allowed_devices:
            try:
                verify_token(
                    auth.secret.get_secret_value(),
                    parse_authorization(info.token or ""),
                    info.client_id or "",
                    info.device_id,
                    max_age_s=auth.max_age_s,
                )
            except (AuthError, ValueError) as exc:
                log.info("refused %s: %s", info.device_id, exc)
                return connection.respond(HTTPStatus.UNAUTHORIZED, f"unauthorized: {exc}\n")
        if self.settings.server.require_activation and self.registry is not None:
            try:
                activated = await self.registry.is_activated(info.device_id)
            except Exception as exc:
                log.warning("refused %s: activation state unknown: %s", info.device_id, exc)
                return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "activation state unknown, retry later\n")
            if not activated:
                log.info("refused %s: not activated", info.device_id)
                return connection.respond(
                    HTTPStatus.UNAUTHORIZED, "unauthorized: device not activated (run the OTA check for a code)\n"
                )
        self._infos[id(connection)] = info
        return None

    def _authorize_live(
        self, connection: ServerConnection, request: Request, query: dict[str, list[str]]
    ) -> Response | None:
        """Remote consoles: ``/xiaozhi/live?device=…[&audio=1]`` with ``Authorization: Bearer <server.live_token>``
        (``audio=1``: also the device's uplink/downlink opus frames, base64 in the JSON)."""
        expected = self.settings.server.live_token.get_secret_value()
        if not expected:
            return connection.respond(HTTPStatus.FORBIDDEN, "the live feed is off: set server.live_token\n")
        given = parse_authorization(request.headers.get("Authorization", "")) or (query.get("token") or [""])[0]
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "unauthorized: bad live token\n")
        device = (query.get("device") or [None])[0]
        audio = (query.get("audio") or ["0"])[0] in ("1", "true", "yes")
        if audio and device is None:
            return connection.respond(HTTPStatus.BAD_REQUEST, "listening in (audio=1) needs device=…\n")
        self._live_filters[id(connection)] = (device, audio)
        return None

    async def _stream_live(self, connection: ServerConnection, device: str | None, audio: bool) -> None:
        subscription = self.live.subscribe(device_id=device, audio=audio)

        async def pump() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for event in subscription:
                    await connection.send(json.dumps(event.to_json(), ensure_ascii=False))

        tasks = {asyncio.create_task(pump()), asyncio.create_task(connection.wait_closed())}
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            subscription.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, connection: ServerConnection) -> None:
        if id(connection) in self._live_filters:
            await self._stream_live(connection, *self._live_filters.pop(id(connection)))
            return
        info = self._infos.pop(id(connection))
        assert self.ctx is not None
        try:
            await DeviceConnection(connection, info, self.ctx).run()
        except Exception:  # one device's bug must never take the server down
            log.exception("device %s: connection failed", info.device_id)

    async def _vad_loop(self, shard: int, shards: int) -> None:
        """Every tick, one uplink worker's streams: their packets out, the worker's reports to the connections."""
        assert self.ctx is not None
        tick = self.settings.server.vad_tick_ms / 1000
        loop = asyncio.get_running_loop()
        # Staggered: with every worker starting at once, they would all want the CPU (and the loop their reports)
        # at the same moment each tick, and each run would take longer.
        next_tick = loop.time() + tick * shard / shards
        while True:
            # Fixed rate, not "tick after the last run": a slow run must not push every later frame back.
            next_tick = max(next_tick + tick, loop.time())
            await asyncio.sleep(next_tick - loop.time())
            if not len(self.ctx.vad):
                continue
            reports = await self.ctx.vad.run(shard)
            for stream_id, report in reports.items():
                conn = self.ctx.by_vad_stream.get(stream_id)
                if conn is None:
                    continue
                try:
                    conn.on_uplink_report(report)
                except Exception:  # one device's bug must not stop VAD for the others
                    log.exception("device %s: uplink report failed", conn.device_id)


def _pipeline_root(settings: Settings) -> dict[str, Any]:
    p = settings.pipeline
    root: dict[str, Any] = {"selected_module": {"ASR": p.asr, "LLM": p.llm, "TTS": p.tts}}
    for kind, instances in p.instances.items():
        root[kind.upper()] = instances
    return root


def _local_address() -> str:
    """This machine's address on the LAN (what a device on the same network reaches)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent; it only picks the outgoing interface
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"
