"""The OTA endpoint the firmware calls before connecting, over real HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from server.config import ServerSettings, Settings
from server.device.server import DeviceServer
from server.protocol.auth import verify_token

FIRMWARE_HEADERS = {
    "Device-Id": "A1:B2:C3:D4:E5:F6",
    "Client-Id": "3f1c6a52-9f0e-4b7e-8f1e-6d1b2a9c0d11",
    "Activation-Version": "1",
    "User-Agent": "bread-compact-wifi/1.6.2",
    "Accept-Language": "zh-CN",
    "Content-Type": "application/json",
}
SYSTEM_INFO = {
    "version": 2, "language": "zh-CN", "flash_size": 16777216, "minimum_free_heap_size": "8318916",
    "mac_address": "a1:b2:c3:d4:e5:f6", "uuid": "3f1c6a52-9f0e-4b7e-8f1e-6d1b2a9c0d11",
    "chip_model_name": "esp32s3", "application": {"name": "xiaozhi", "version": "1.6.2"},
    "board": {"type": "bread-compact-wifi", "name": "bread-compact-wifi"},
}  # fmt: skip


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[DeviceServer]:
    settings = Settings(
        data_dir=tmp_path,
        server=ServerSettings(host="127.0.0.1", port=0, http_port=0, auth={"enabled": True, "secret": "k"}),  # type: ignore[arg-type]
    )
    srv = DeviceServer(settings)
    await srv.start()
    yield srv
    await srv.stop()


async def post(url: str, body: object, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as http, http.post(url, data=json.dumps(body), headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def test_firmware_check_gets_websocket_url_token_and_time(server: DeviceServer) -> None:
    status, answer = await post(server.ota_url(), SYSTEM_INFO, FIRMWARE_HEADERS)
    assert status == 200
    websocket = answer["websocket"]
    assert isinstance(websocket, dict) and websocket["url"] == server.websocket_url()
    verify_token("k", websocket["token"], FIRMWARE_HEADERS["Client-Id"], "a1:b2:c3:d4:e5:f6")
    assert answer["firmware"] == {"version": "1.6.2", "url": ""}
    assert "mqtt" not in answer, "no mqtt section: the firmware must choose WebSocket"
    server_time = answer["server_time"]
    assert isinstance(server_time, dict) and server_time["timestamp"] > 1_700_000_000_000


@pytest.mark.parametrize(
    ("drop", "body", "message"),
    [
        ("Device-Id", SYSTEM_INFO, "Device-Id"),
        ("Client-Id", SYSTEM_INFO, "Client-Id"),
        (None, "not json at all", "system-info JSON"),
        (None, [1, 2], "JSON object"),
    ],
)
async def test_bad_requests_get_a_clear_400(server: DeviceServer, drop: str | None, body: object, message: str) -> None:
    headers = {k: v for k, v in FIRMWARE_HEADERS.items() if k != drop}
    raw = body if isinstance(body, str) else json.dumps(body)
    async with aiohttp.ClientSession() as http, http.post(server.ota_url(), data=raw, headers=headers) as response:
        assert response.status == 400
        assert message in (await response.json())["message"]


async def test_activation_and_health(server: DeviceServer) -> None:
    status, answer = await post(server.ota_url() + "activate", {}, FIRMWARE_HEADERS)
    assert status == 200 and answer["success"] is True
    health_url = server.ota_url().replace("/xiaozhi/ota/", "/healthz")
    async with aiohttp.ClientSession() as http, http.get(health_url) as response:
        health = await response.json()
    assert response.status == 200 and health["ok"] is True and health["connections"] == 0
