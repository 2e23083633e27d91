"""The OTA client against a scripted HTTP server: the firmware's request, the answer, one-line errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from simulator.client import DeviceClient
from simulator.errors import SimulatorError
from simulator.identity import DeviceIdentity
from simulator.ota import activate, check_ota

IDENTITY = DeviceIdentity("02:aa:bb:cc:dd:ee", "0f8fad5b-d9cb-469f-a165-70867728950e")
Route = Callable[[web.Request], Awaitable[web.Response]]


@dataclass
class OtaStub:
    """Serves ``/xiaozhi/ota/`` and ``/xiaozhi/ota/activate`` with ``route``; remembers every request."""

    seen: list[tuple[web.Request, bytes]] = field(default_factory=list)
    runners: list[web.AppRunner] = field(default_factory=list)

    async def start(self, route: Route) -> str:
        async def handler(request: web.Request) -> web.Response:
            self.seen.append((request, await request.read()))
            return await route(request)

        app = web.Application()
        app.router.add_post("/xiaozhi/ota/", handler)
        app.router.add_post("/xiaozhi/ota/activate", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}/xiaozhi/ota/"


@pytest.fixture
async def stub() -> AsyncIterator[OtaStub]:
    server = OtaStub()
    yield server
    for runner in server.runners:
        await runner.cleanup()


async def test_ota_request_is_the_firmwares_and_the_answer_is_read(stub: OtaStub) -> None:
    async def route(request: web.Request) -> web.Response:
        return web.json_response({
            "websocket": {"url": "ws://h:1/xiaozhi/v1/", "token": "abc"},
            "server_time": {"timestamp": 1_700_000_000_000, "timezone_offset": 480},
            "firmware": {"version": "1.6.2", "url": ""},
            "activation": {"code": "123456", "message": "bind me", "challenge": "c", "timeout_ms": 30000},
        })  # fmt: skip

    url = await stub.start(route)
    result = await check_ota(url, IDENTITY, app_version="1.7.1", board="my-board")
    assert (result.websocket_url, result.token, result.server_time_ms) == (
        "ws://h:1/xiaozhi/v1/",
        "abc",
        1_700_000_000_000,
    )
    assert result.timezone_offset_min == 480 and result.activation is not None
    assert (result.activation.code, result.activation.challenge, result.activation.timeout_ms) == ("123456", "c", 30000)
    request, raw = stub.seen[0]
    assert request.headers["Device-Id"] == IDENTITY.device_id and request.headers["Client-Id"] == IDENTITY.client_id
    assert request.headers["Activation-Version"] == "1" and request.headers["User-Agent"] == "my-board/1.7.1"
    assert request.headers["Content-Type"] == "application/json" and request.headers["Accept-Language"] == "zh-CN"
    body = json.loads(raw)
    assert body["application"]["version"] == "1.7.1" and body["board"]["type"] == "my-board"
    assert body["mac_address"] == IDENTITY.device_id and body["uuid"] == IDENTITY.client_id
    assert isinstance(body["minimum_free_heap_size"], str) and body["partition_table"]


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (400, {"success": False, "message": "Client-Id header is required"}, "HTTP 400: Client-Id header is required"),
        (500, "<html>oops</html>", "HTTP 500: <html>oops</html>"),
        (200, "not json", "not JSON"),
        (200, {"firmware": {"version": "1"}}, "without a websocket section"),
        (200, {"mqtt": {"endpoint": "x"}}, "only MQTT"),
        (200, {"success": False, "message": "request error."}, "refused: request error."),  # the Python server's way
    ],
)
async def test_ota_failures_are_one_line_errors(stub: OtaStub, status: int, body: object, message: str) -> None:
    async def route(request: web.Request) -> web.Response:
        if isinstance(body, str):
            return web.Response(status=status, text=body)
        return web.json_response(body, status=status)

    url = await stub.start(route)
    with pytest.raises(SimulatorError, match=message) as error:
        await check_ota(url, IDENTITY)
    assert "\n" not in str(error.value)


async def test_activation_polls_report_activated_pending_or_error(stub: OtaStub) -> None:
    answers = iter([202, 200, 403])

    async def route(request: web.Request) -> web.Response:
        return web.json_response({}, status=next(answers))

    url = await stub.start(route)
    assert await activate(url, IDENTITY) == "pending"
    assert await activate(url, IDENTITY) == "activated"
    with pytest.raises(SimulatorError, match=r"activate answered HTTP 403"):
        await activate(url, IDENTITY)
    assert all(r.path == "/xiaozhi/ota/activate" and json.loads(raw) == {} for r, raw in stub.seen)


@pytest.mark.parametrize(("version", "chosen", "used"), [(3, None, 3), (3, 2, 2), (None, None, 1), ("2", None, 1)])
async def test_the_ota_answers_protocol_version_is_used_unless_one_was_chosen(
    stub: OtaStub, version: object, chosen: int | None, used: int
) -> None:
    # the firmware keeps every key of the websocket section and sends its version as Protocol-Version
    async def route(request: web.Request) -> web.Response:
        websocket: dict[str, object] = {"url": "ws://h:1/xiaozhi/v1/"}
        if version is not None:
            websocket["version"] = version
        return web.json_response({"websocket": websocket})

    url = await stub.start(route)
    client = await DeviceClient.from_ota(url, IDENTITY, protocol_version=chosen)
    assert client.version == used
