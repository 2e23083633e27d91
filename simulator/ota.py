"""The firmware's OTA check (protocol.md §2): where to connect, with which token, and activation.

Before opening the WebSocket a real device POSTs its system info to the OTA URL and connects to whatever
``websocket.url`` the answer names, with ``websocket.token`` as bearer token.  Doing the same lets the
simulator test a server's OTA endpoint and its token issuing exactly as a device exercises them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from server.text import one_line
from simulator.errors import SimulatorError
from simulator.identity import DeviceIdentity

__all__ = [
    "Activation", "ActivationRefused", "OtaResult", "activate", "activation_url", "check_ota", "firmware_headers",
    "system_info",
]  # fmt: skip

DEFAULT_APP_VERSION = "1.6.2"
DEFAULT_BOARD = "xiaozhi-simulator"
DEFAULT_LANGUAGE = "zh-CN"
TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Activation:
    """The server wants the user to bind this device: speak/show ``code``, then poll :func:`activate`."""

    code: str
    message: str = ""
    challenge: str = ""
    timeout_ms: int | None = None


@dataclass(frozen=True, slots=True)
class OtaResult:
    websocket_url: str
    token: str = ""
    server_time_ms: int | None = None
    timezone_offset_min: int | None = None
    firmware_version: str | None = None
    firmware_url: str | None = None
    activation: Activation | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    protocol_version: int | None = None  # websocket.version: the firmware sends it as Protocol-Version


def firmware_headers(
    identity: DeviceIdentity, *, app_version: str = DEFAULT_APP_VERSION, board: str = DEFAULT_BOARD,
    language: str = DEFAULT_LANGUAGE,
) -> dict[str, str]:  # fmt: skip
    """Headers of ``Ota::CheckVersion``; Activation-Version 1 = no eFuse serial number (like most boards)."""
    return {
        "Activation-Version": "1",
        "Device-Id": identity.device_id,
        "Client-Id": identity.client_id,
        "User-Agent": f"{board}/{app_version}",
        "Accept-Language": language,
        "Content-Type": "application/json",
    }


def system_info(
    identity: DeviceIdentity, *, app_version: str = DEFAULT_APP_VERSION, board: str = DEFAULT_BOARD,
    language: str = DEFAULT_LANGUAGE,
) -> dict[str, Any]:  # fmt: skip
    """The body ``Board::GetSystemInfoJson`` sends, with plausible values for an ESP32-S3 Wi-Fi board.

    Servers pick firmware updates by ``application.version`` and ``board.type`` and some log the rest,
    so every field the firmware sends is present with the right type.
    """
    return {
        "version": 2,
        "language": language,
        "flash_size": 16 * 1024 * 1024,
        "minimum_free_heap_size": "7265024",  # a string in the firmware too
        "mac_address": identity.device_id,
        "uuid": identity.client_id,
        "chip_model_name": "esp32s3",
        "chip_info": {"model": 9, "cores": 2, "revision": 2, "features": 18},
        "application": {
            "name": "xiaozhi",
            "version": app_version,
            "compile_time": "Jan  1 2025T00:00:00Z",
            "idf_version": "v5.4.1",
            "elf_sha256": "0" * 64,
        },
        "partition_table": [
            {"label": "nvs", "type": 1, "subtype": 2, "address": 0x9000, "size": 0x4000},
            {"label": "otadata", "type": 1, "subtype": 0, "address": 0xD000, "size": 0x2000},
            {"label": "phy_init", "type": 1, "subtype": 1, "address": 0xF000, "size": 0x1000},
            {"label": "ota_0", "type": 0, "subtype": 16, "address": 0x20000, "size": 0x3F0000},
            {"label": "ota_1", "type": 0, "subtype": 17, "address": 0x410000, "size": 0x3F0000},
        ],
        "ota": {"label": "ota_0"},
        "display": {"monochrome": False, "width": 240, "height": 240},
        "board": {
            "type": board,
            "name": board,
            "ssid": "xiaozhi-sim",
            "rssi": -52,
            "channel": 6,
            "ip": "192.168.1.23",
            "mac": identity.device_id,
        },
    }


def _reason(response: httpx.Response) -> str:
    """The server's own explanation: ``message`` of a JSON error body, else the body text."""
    try:
        body = response.json()
    except ValueError:
        return one_line(response.text) or response.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return one_line(body["message"])
    return one_line(response.text)


async def _post(url: str, headers: dict[str, str], body: dict[str, Any], timeout_s: float) -> httpx.Response:
    try:
        async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=True) as http:
            return await http.post(url, content=json.dumps(body, ensure_ascii=False).encode(), headers=headers)
    except httpx.InvalidURL as exc:
        raise SimulatorError(f"bad OTA URL {url!r}: {exc}") from None
    except httpx.UnsupportedProtocol:
        raise SimulatorError(f"bad OTA URL {url!r}: it must start with http:// or https://") from None
    except httpx.TimeoutException:
        raise SimulatorError(f"OTA server {url} did not answer within {timeout_s:g} s") from None
    except httpx.HTTPError as exc:
        raise SimulatorError(f"cannot reach OTA server {url}: {one_line(str(exc)) or type(exc).__name__}") from None


def _optional_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _parse_result(url: str, body: object) -> OtaResult:
    if not isinstance(body, dict):
        raise SimulatorError(f"OTA server {url} answered JSON that is not an object")
    if body.get("success") is False:  # the Python reference server's errors come as HTTP 200
        reason = body.get("message")
        raise SimulatorError(f"OTA server {url} refused: {one_line(reason) if isinstance(reason, str) else body}")
    websocket = body.get("websocket")
    if not isinstance(websocket, dict) or not isinstance(websocket.get("url"), str) or not websocket["url"]:
        if isinstance(body.get("mqtt"), dict):
            raise SimulatorError(f"OTA server {url} offers only MQTT+UDP; the simulator speaks WebSocket only")
        raise SimulatorError(f"OTA server {url} answered without a websocket section (url)")
    token = websocket.get("token")
    server_time = body.get("server_time") if isinstance(body.get("server_time"), dict) else {}
    firmware = body.get("firmware") if isinstance(body.get("firmware"), dict) else {}
    activation = None
    raw_activation = body.get("activation")
    if isinstance(raw_activation, dict) and raw_activation.get("code") not in (None, ""):
        activation = Activation(
            code=str(raw_activation["code"]),
            message=str(raw_activation.get("message") or ""),
            challenge=str(raw_activation.get("challenge") or ""),
            timeout_ms=_optional_int(raw_activation.get("timeout_ms")),
        )
    return OtaResult(
        websocket_url=websocket["url"],
        token=token if isinstance(token, str) else "",
        server_time_ms=_optional_int(server_time.get("timestamp")),
        timezone_offset_min=_optional_int(server_time.get("timezone_offset")),
        firmware_version=firmware.get("version") if isinstance(firmware.get("version"), str) else None,
        firmware_url=firmware.get("url") if isinstance(firmware.get("url"), str) else None,
        activation=activation,
        raw=body,
        protocol_version=version if (version := _optional_int(websocket.get("version"))) in (1, 2, 3) else None,
    )


async def check_ota(
    ota_url: str,
    identity: DeviceIdentity,
    *,
    app_version: str = DEFAULT_APP_VERSION,
    board: str = DEFAULT_BOARD,
    language: str = DEFAULT_LANGUAGE,
    timeout_s: float = TIMEOUT_S,
) -> OtaResult:
    """POST the system info like ``Ota::CheckVersion`` and read where to connect.

    One attempt only: the firmware's retry-with-backoff is a policy for unattended devices, while a
    simulator user wants to see the failure now.
    """
    headers = firmware_headers(identity, app_version=app_version, board=board, language=language)
    body = system_info(identity, app_version=app_version, board=board, language=language)
    response = await _post(ota_url, headers, body, timeout_s)
    if response.status_code != 200:
        raise SimulatorError(f"OTA server {ota_url} answered HTTP {response.status_code}: {_reason(response)}")
    try:
        answer = response.json()
    except ValueError:
        raise SimulatorError(
            f"OTA server {ota_url} answered something that is not JSON: {one_line(response.text, 80)!r}"
        ) from None
    return _parse_result(ota_url, answer)


def activation_url(ota_url: str) -> str:
    """``<ota_url>/activate``, slash-joined like the firmware (no double slash)."""
    return ota_url + ("activate" if ota_url.endswith("/") else "/activate")


async def activate(
    ota_url: str,
    identity: DeviceIdentity,
    *,
    app_version: str = DEFAULT_APP_VERSION,
    board: str = DEFAULT_BOARD,
    language: str = DEFAULT_LANGUAGE,
    timeout_s: float = TIMEOUT_S,
) -> Literal["activated", "pending"]:
    """One activation poll: 200 = bound ("activated"), 202 = the user has not entered the code yet.

    The body is ``{}``: a v1 device has no eFuse key to sign the challenge with.
    """
    url = activation_url(ota_url)
    headers = firmware_headers(identity, app_version=app_version, board=board, language=language)
    response = await _post(url, headers, {}, timeout_s)
    if response.status_code == 200:
        return "activated"
    if response.status_code == 202:
        return "pending"
    raise ActivationRefused(f"activation at {url} answered HTTP {response.status_code}: {_reason(response)}")


class ActivationRefused(SimulatorError):
    """The activation endpoint answered neither 200 nor 202 (some servers have none, or want a signed body
    a v1 device cannot make): the firmware then re-checks OTA until the answer carries no activation."""
