"""The simulated device's MCP server, driven with the backend's own request builders."""

from __future__ import annotations

import json

from server.protocol import mcp
from simulator.mcp_tools import DeviceMcpServer, DeviceState


def answer(server: DeviceMcpServer, payload: dict) -> mcp.McpResponse:
    reply = server.handle(payload)
    assert reply is not None
    parsed = mcp.parse_mcp_payload(reply)
    assert isinstance(parsed, mcp.McpResponse) and parsed.id == payload["id"]
    return parsed


def test_initialize_answers_like_the_firmware_and_keeps_the_vision_endpoint() -> None:
    server = DeviceMcpServer(name="bread-compact-wifi", version="1.7.0")
    result = answer(server, mcp.initialize_request(1, vision_url="http://x/vision", vision_token="t")).result
    info = mcp.parse_initialize_result(result)
    assert (info.protocol_version, info.server_name, info.server_version) == (
        "2024-11-05",
        "bread-compact-wifi",
        "1.7.0",
    )
    assert info.capabilities == {"tools": {}}
    assert server.vision == {"url": "http://x/vision", "token": "t"} and server.initialized


def test_tools_list_pages_by_size_with_the_next_tool_name_as_cursor() -> None:
    server = DeviceMcpServer(max_page_bytes=900)
    for i in range(12):
        server.add_tool(mcp.McpTool(f"self.extra.tool_{i}", "x" * 100), lambda args: True)
    names: list[str] = []
    cursor, pages = "", 0
    while True:
        page = mcp.parse_tools_list_result(answer(server, mcp.tools_list_request(pages + 10, cursor)).result)
        pages += 1
        assert page.tools, "every page carries at least one tool"
        names += [tool.name for tool in page.tools]
        if not page.next_cursor:
            break
        assert page.next_cursor in {tool.name for tool in server.tools} and page.next_cursor not in names
        cursor = page.next_cursor
    assert pages > 2
    assert names == [tool.name for tool in server.tools if tool.name != "self.get_system_info"]
    assert server.lists_served == pages


def test_user_only_tools_are_listed_only_on_request() -> None:
    server = DeviceMcpServer()
    plain = mcp.parse_tools_list_result(answer(server, mcp.tools_list_request(1)).result)
    full = mcp.parse_tools_list_result(answer(server, mcp.tools_list_request(2, with_user_tools=True)).result)
    assert "self.get_system_info" not in {t.name for t in plain.tools}
    assert "self.get_system_info" in {t.name for t in full.tools}


def test_set_volume_changes_the_state_and_status_reports_it() -> None:
    state = DeviceState(volume=50)
    server = DeviceMcpServer(state)
    result = mcp.parse_tool_call_result(
        answer(server, mcp.tools_call_request(3, "self.audio_speaker.set_volume", {"volume": 30})).result
    )
    assert not result.is_error and result.text == "true" and state.volume == 30
    status = mcp.parse_tool_call_result(answer(server, mcp.tools_call_request(4, "self.get_device_status")).result)
    data = json.loads(status.text)
    assert data["audio_speaker"]["volume"] == 30
    assert {"screen", "battery", "network"} <= data.keys()
    assert [c.name for c in server.calls] == ["self.audio_speaker.set_volume", "self.get_device_status"]


def test_out_of_range_volume_is_refused_in_the_firmwares_words_and_changes_nothing() -> None:
    # The firmware answers a JSON-RPC error with its Property message; the reference servers hand that message
    # to their LLM (the text of an isError result they drop), so the user hears why.
    state = DeviceState(volume=50)
    server = DeviceMcpServer(state)
    high = answer(server, mcp.tools_call_request(5, "self.audio_speaker.set_volume", {"volume": 150}))
    low = answer(server, mcp.tools_call_request(6, "self.audio_speaker.set_volume", {"volume": -5}))
    assert high.error is not None and high.error.code == mcp.INVALID_PARAMS
    assert high.error.message == "Property 'volume': value 150 exceeds maximum 100"
    assert low.error is not None and low.error.message == "Property 'volume': value -5 is below minimum 0"
    assert state.volume == 50
    assert [(c.name, c.is_error) for c in server.calls] == [("self.audio_speaker.set_volume", True)] * 2


def test_bad_arguments_and_unknown_tools_are_json_rpc_errors() -> None:
    server = DeviceMcpServer()
    missing = answer(server, mcp.tools_call_request(6, "self.audio_speaker.set_volume", {}))
    assert missing.error is not None and missing.error.code == mcp.INVALID_PARAMS and "volume" in missing.error.message
    wrong = answer(server, mcp.tools_call_request(7, "self.audio_speaker.set_volume", {"volume": "loud"}))
    assert wrong.error is not None and wrong.error.code == mcp.INVALID_PARAMS
    unknown = answer(server, mcp.tools_call_request(8, "self.teleport", {}))
    assert unknown.error is not None and unknown.error.code == mcp.METHOD_NOT_FOUND
    assert "self.teleport" in unknown.error.message
    method = answer(server, {"jsonrpc": "2.0", "id": 9, "method": "resources/list"})
    assert method.error is not None and method.error.code == mcp.METHOD_NOT_FOUND


def test_a_failing_tool_answers_an_error_instead_of_staying_silent() -> None:
    server = DeviceMcpServer()

    def broken(args: dict) -> bool:
        raise RuntimeError("codec not ready")

    server.add_tool(mcp.McpTool("self.broken"), broken)
    response = answer(server, mcp.tools_call_request(12, "self.broken"))
    assert response.error is not None and response.error.message == "codec not ready"


def test_firmware_style_errors_have_no_code() -> None:
    server = DeviceMcpServer(error_codes=False)
    reply = server.handle(mcp.tools_call_request(13, "self.nope"))
    assert reply == {"jsonrpc": "2.0", "id": 13, "error": {"message": "Unknown tool: self.nope"}}


def test_light_and_integral_floats() -> None:
    state = DeviceState()
    server = DeviceMcpServer(state)
    answer(server, mcp.tools_call_request(10, "self.light.set_rgb", {"r": 255, "g": 0.0, "b": 0}))
    assert state.rgb == (255, 0, 0) and state.light_on
    answer(server, mcp.tools_call_request(11, "self.light.turn_off"))
    assert not state.light_on


def test_notifications_responses_and_garbage_get_no_answer() -> None:
    server = DeviceMcpServer()
    assert server.handle(mcp.notification("notifications/initialized")) is None
    assert server.handle(mcp.result(1, {})) is None
    assert server.handle({"jsonrpc": "1.0", "id": 1, "method": "initialize"}) is None
    assert server.handle("nonsense") is None
