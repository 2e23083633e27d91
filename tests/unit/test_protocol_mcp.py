"""MCP over the device channel (spec §1.6): request builders, payload parsing, device-side builders."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.protocol import mcp
from server.protocol.mcp import (
    InitializeResult,
    McpError,
    McpNotification,
    McpRequest,
    McpResponse,
    McpRpcError,
    McpTool,
    ToolsPage,
    parse_mcp_payload,
)

# A tools/list result as the firmware returns it (McpServer::GetToolsList).
FIRMWARE_TOOLS = {
    "tools": [
        {
            "name": "self.get_device_status",
            "description": "Provides the real-time information of the device ...",
            "inputSchema": {"type": "object", "properties": {}},
        },
        {
            "name": "self.audio_speaker.set_volume",
            "description": "Set the volume of the audio speaker.",
            "inputSchema": {
                "type": "object",
                "properties": {"volume": {"type": "integer", "minimum": 0, "maximum": 100}},
                "required": ["volume"],
            },
        },
    ],
    "nextCursor": "self.light.set_rgb",
}


# --- server (client) requests -------------------------------------------------------------------


def test_initialize_request_without_vision() -> None:
    assert mcp.initialize_request(1) == {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2024-11-05",
            "capabilities": {"roots": {"listChanged": True}, "sampling": {}},
            "clientInfo": {"name": "XiaozhiClient", "version": "1.0.0"},
        },
    }


def test_initialize_request_with_vision() -> None:
    request = mcp.initialize_request(1, vision_url="http://192.168.1.2:8003/mcp/vision/explain", vision_token="t")
    assert request["params"]["capabilities"]["vision"] == {
        "url": "http://192.168.1.2:8003/mcp/vision/explain",
        "token": "t",
    }
    assert mcp.initialize_request(1, "http://h/v")["params"]["capabilities"]["vision"] == {"url": "http://h/v"}


def test_initialize_request_does_not_share_client_info() -> None:
    request = mcp.initialize_request(1)
    request["params"]["clientInfo"]["name"] = "changed"
    assert mcp.initialize_request(1)["params"]["clientInfo"]["name"] == "XiaozhiClient"


def test_tools_list_request() -> None:
    assert mcp.tools_list_request(2) == {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/list",
        "params": {"cursor": "", "withUserTools": False},
    }
    assert mcp.tools_list_request("3", cursor="self.light", with_user_tools=True)["params"] == {
        "cursor": "self.light",
        "withUserTools": True,
    }


def test_tools_call_request() -> None:
    assert mcp.tools_call_request(7, "self.audio_speaker.set_volume", {"volume": 50}) == {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "self.audio_speaker.set_volume", "arguments": {"volume": 50}},
    }
    assert mcp.tools_call_request(8, "self.get_device_status")["params"]["arguments"] == {}


@pytest.mark.parametrize("bad_id", [True, 1.0, None, [1]])
def test_request_ids_are_int_or_str(bad_id: object) -> None:
    with pytest.raises(ValueError, match="JSON-RPC id must be an int or str"):
        mcp.tools_list_request(bad_id)  # type: ignore[arg-type]


# --- parsing device payloads --------------------------------------------------------------------


def test_parse_initialize_response() -> None:
    payload = {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {
            "protocolVersion": "2024-11-05",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "bread-compact-wifi", "version": "1.8.2"},
        },
    }
    response = parse_mcp_payload(payload)
    assert isinstance(response, McpResponse) and response.ok and response.id == 1
    assert mcp.parse_initialize_result(response.result) == InitializeResult(
        "2024-11-05", "bread-compact-wifi", "1.8.2", {"tools": {}}
    )


def test_parse_error_response() -> None:
    payload = {"jsonrpc": "2.0", "id": 9, "error": {"code": -32601, "message": "Unknown tool: self.nope"}}
    response = parse_mcp_payload(payload)
    assert response == McpResponse(id=9, error=McpRpcError(mcp.METHOD_NOT_FOUND, "Unknown tool: self.nope"))
    assert not response.ok


def test_parse_error_response_with_null_id_and_data() -> None:
    payload = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error", "data": "x"}}
    assert parse_mcp_payload(payload) == McpResponse(None, error=McpRpcError(-32700, "Parse error", "x"))


def test_parse_null_result_is_a_result() -> None:
    assert parse_mcp_payload({"jsonrpc": "2.0", "id": "a", "result": None}) == McpResponse("a", result=None)


def test_parse_state_changed_notification() -> None:
    payload = {
        "jsonrpc": "2.0",
        "method": "notifications/state_changed",
        "params": {"newState": "speaking", "oldState": "listening"},
    }
    assert parse_mcp_payload(payload) == McpNotification(
        "notifications/state_changed", {"newState": "speaking", "oldState": "listening"}
    )
    assert parse_mcp_payload({"jsonrpc": "2.0", "method": "ping"}) == McpNotification("ping", None)


def test_parse_request_for_the_simulator() -> None:
    request = parse_mcp_payload(mcp.tools_call_request(5, "self.light.set_rgb", {"r": 1, "g": 2, "b": 3}))
    assert request == McpRequest(5, "tools/call", {"name": "self.light.set_rgb", "arguments": {"r": 1, "g": 2, "b": 3}})
    assert parse_mcp_payload({"jsonrpc": "2.0", "id": 1, "method": "m", "params": [1]}) == McpRequest(1, "m", [1])


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ([], "MCP payload must be an object, got list"),
        ("{}", "MCP payload must be an object, got str"),
        ({"id": 1, "result": {}}, "jsonrpc must be '2.0', got None"),
        ({"jsonrpc": "1.0", "id": 1, "result": {}}, "jsonrpc must be '2.0', got '1.0'"),
        ({"jsonrpc": 2.0, "id": 1, "result": {}}, "jsonrpc must be '2.0', got 2.0"),
        ({"jsonrpc": "2.0"}, "JSON-RPC object has neither method nor id"),
        ({"jsonrpc": "2.0", "method": ""}, "method must be a non-empty string, got ''"),
        ({"jsonrpc": "2.0", "method": 3}, "method must be a non-empty string, got 3"),
        ({"jsonrpc": "2.0", "method": None, "id": 1}, "method must be a non-empty string, got None"),
        ({"jsonrpc": "2.0", "method": "m", "id": 1, "result": 1}, "m: a request cannot carry result or error"),
        ({"jsonrpc": "2.0", "method": "m", "params": "x"}, "params must be an object or array, got 'x'"),
        ({"jsonrpc": "2.0", "method": "m", "id": 1.5}, "m: id must be an integer or string, got 1.5"),
        ({"jsonrpc": "2.0", "method": "m", "id": None}, "m: id must be an integer or string, got None"),
        ({"jsonrpc": "2.0", "method": "m", "id": True}, "m: id must be an integer or string, got True"),
        ({"jsonrpc": "2.0", "id": [1], "result": 1}, "response id must be an integer, string or null, got [1]"),
        ({"jsonrpc": "2.0", "id": False, "result": 1}, "response id must be an integer, string or null, got False"),
        ({"jsonrpc": "2.0", "id": 1}, "response 1 must have exactly one of result and error"),
        (
            {"jsonrpc": "2.0", "id": 1, "result": 1, "error": {"code": 1, "message": "m"}},
            "response 1 must have exactly one of result and error",
        ),
        ({"jsonrpc": "2.0", "id": None, "result": {}}, "a successful response needs a non-null id"),
        ({"jsonrpc": "2.0", "id": 1, "error": "boom"}, "error must be an object, got 'boom'"),
        ({"jsonrpc": "2.0", "id": 1, "error": {"code": "x", "message": "m"}}, "error.code must be an integer, got 'x'"),
        ({"jsonrpc": "2.0", "id": 1, "error": {"code": "1", "message": "m"}}, "error.code must be an integer, got '1'"),
        (
            {"jsonrpc": "2.0", "id": 1, "error": {"code": True, "message": "m"}},
            "error.code must be an integer, got True",
        ),
        ({"jsonrpc": "2.0", "id": 1, "error": {"code": 1}}, "error.message must be a string, got None"),
    ],
)
def test_malformed_payloads(payload: object, reason: str) -> None:
    with pytest.raises(McpError) as info:
        parse_mcp_payload(payload)
    assert str(info.value) == reason


# --- tools/list and tools/call results ----------------------------------------------------------


def test_parse_firmware_tools_page() -> None:
    page = mcp.parse_tools_list_result(FIRMWARE_TOOLS)
    assert page.next_cursor == "self.light.set_rgb"
    assert [tool.name for tool in page.tools] == ["self.get_device_status", "self.audio_speaker.set_volume"]
    volume = page.tools[1]
    assert volume.description == "Set the volume of the audio speaker."
    assert volume.input_schema["required"] == ["volume"]


@pytest.mark.parametrize("cursor", [{}, {"nextCursor": ""}, {"nextCursor": None}])
def test_last_page(cursor: dict[str, Any]) -> None:
    assert mcp.parse_tools_list_result({"tools": [], **cursor}) == ToolsPage((), "")


def test_tool_defaults() -> None:
    page = mcp.parse_tools_list_result({"tools": [{"name": "self.reboot"}, {"name": "x", "description": None}]})
    assert page.tools[0] == McpTool("self.reboot", "", {"type": "object", "properties": {}})
    assert page.tools[1].description == ""


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        ([], "tools/list result must be an object, got list"),
        ({}, "tools/list result: tools must be an array, got None"),
        ({"tools": {}}, "tools/list result: tools must be an array, got {}"),
        ({"tools": [], "nextCursor": 2}, "tools/list result: nextCursor must be a string, got 2"),
        ({"tools": ["self.x"]}, "tools[0] must be an object, got str"),
        ({"tools": [{"name": "a"}, {"description": "d"}]}, "tools[1].name must be a non-empty string, got None"),
        ({"tools": [{"name": ""}]}, "tools[0].name must be a non-empty string, got ''"),
        ({"tools": [{"name": "a", "description": 1}]}, "tool a: description must be a string, got 1"),
        ({"tools": [{"name": "a", "inputSchema": "{}"}]}, "tool a: inputSchema must be an object, got '{}'"),
    ],
)
def test_malformed_tools_list(result: object, reason: str) -> None:
    with pytest.raises(McpError) as info:
        mcp.parse_tools_list_result(result)
    assert str(info.value) == reason


def test_paginated_listing_round_trip() -> None:
    # The simulator serves pages with tools_list_result; the server walks them with nextCursor.
    tools = [McpTool(f"self.tool_{i}", f"tool {i}", {"type": "object", "properties": {}}) for i in range(5)]
    pages = {"": (tools[:2], "self.tool_2"), "self.tool_2": (tools[2:4], "self.tool_4"), "self.tool_4": (tools[4:], "")}
    seen: list[McpTool] = []
    cursor, request_id = "", 2
    while True:
        request = parse_mcp_payload(json.loads(json.dumps(mcp.tools_list_request(request_id, cursor))))
        assert isinstance(request, McpRequest) and isinstance(request.params, dict)
        served, next_cursor = pages[request.params["cursor"]]
        response = parse_mcp_payload(mcp.result(request.id, mcp.tools_list_result(served, next_cursor)))
        assert isinstance(response, McpResponse) and response.id == request_id
        page = mcp.parse_tools_list_result(response.result)
        seen.extend(page.tools)
        if not page.next_cursor:
            break
        cursor, request_id = page.next_cursor, request_id + 1
    assert seen == tools


def test_tools_list_result_omits_empty_cursor() -> None:
    assert mcp.tools_list_result([McpTool("a")]) == {
        "tools": [{"name": "a", "description": "", "inputSchema": {"type": "object", "properties": {}}}]
    }


def test_tool_call_result() -> None:
    result = mcp.parse_tool_call_result(mcp.tool_result_text('{"audio_speaker":{"volume":50}}'))
    assert not result.is_error and result.text == '{"audio_speaker":{"volume":50}}'
    failed = mcp.parse_tool_call_result(mcp.tool_result_text("no camera", is_error=True))
    assert failed.is_error and failed.text == "no camera"
    mixed = mcp.parse_tool_call_result(
        {"content": [{"type": "text", "text": "a"}, {"type": "image", "data": "…"}, {"type": "text", "text": "b"}]}
    )
    assert mixed.text == "a\nb" and len(mixed.content) == 3 and not mixed.is_error


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        (None, "tools/call result must be an object, got NoneType"),
        ({"content": "x"}, "tools/call result: content must be an array of objects, got 'x'"),
        ({"content": ["x"]}, "tools/call result: content must be an array of objects, got ['x']"),
        ({"content": [], "isError": "false"}, "tools/call result: isError must be a boolean, got 'false'"),
    ],
)
def test_malformed_tool_call_result(result: object, reason: str) -> None:
    with pytest.raises(McpError) as info:
        mcp.parse_tool_call_result(result)
    assert str(info.value) == reason


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        ("x", "initialize result must be an object, got str"),
        ({}, "initialize result: protocolVersion must be a string, got None"),
        ({"protocolVersion": "v", "capabilities": []}, "initialize result: capabilities must be an object, got []"),
        ({"protocolVersion": "v", "serverInfo": "x"}, "initialize result: serverInfo must be an object, got 'x'"),
        (
            {"protocolVersion": "v", "serverInfo": {"name": 1}},
            "initialize result: serverInfo name and version must be strings",
        ),
    ],
)
def test_malformed_initialize_result(result: object, reason: str) -> None:
    with pytest.raises(McpError) as info:
        mcp.parse_initialize_result(result)
    assert str(info.value) == reason


# --- device-side builders -----------------------------------------------------------------------


def test_device_side_builders() -> None:
    assert mcp.result(1, {"ok": True}) == {"jsonrpc": "2.0", "id": 1, "result": {"ok": True}}
    assert mcp.error_response(3, mcp.METHOD_NOT_FOUND, "Unknown tool: x") == {
        "jsonrpc": "2.0",
        "id": 3,
        "error": {"code": -32601, "message": "Unknown tool: x"},
    }
    assert mcp.error_response(None, mcp.PARSE_ERROR, "Parse error", data="bad")["error"]["data"] == "bad"
    assert mcp.tool_result_text("ok") == {"content": [{"type": "text", "text": "ok"}], "isError": False}
    assert mcp.notification("notifications/state_changed", {"newState": "idle", "oldState": "speaking"}) == {
        "jsonrpc": "2.0",
        "method": "notifications/state_changed",
        "params": {"newState": "idle", "oldState": "speaking"},
    }
    assert mcp.notification("x") == {"jsonrpc": "2.0", "method": "x"}
    assert mcp.initialize_result("sim", "0.1") == {
        "protocolVersion": "2024-11-05",
        "capabilities": {"tools": {}},
        "serverInfo": {"name": "sim", "version": "0.1"},
    }


def test_device_builders_parse_back() -> None:
    assert isinstance(parse_mcp_payload(mcp.notification("notifications/x")), McpNotification)
    assert parse_mcp_payload(mcp.error_response(4, -32602, "bad")) == McpResponse(4, error=McpRpcError(-32602, "bad"))
    assert mcp.parse_initialize_result(mcp.initialize_result("sim", "0.1")).server_name == "sim"


# --- fuzzing -------------------------------------------------------------------------------------

_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10)
_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=15,
)
_keys = st.sampled_from(["jsonrpc", "id", "method", "params", "result", "error"])
_near_valid = st.dictionaries(
    _keys,
    _values
    | st.just("2.0")
    | st.sampled_from(["tools/list", "notifications/state_changed"])
    | st.fixed_dictionaries({"code": _values, "message": _values}),
    max_size=6,
)


def _parse_or_error(payload: object) -> None:
    try:
        message = parse_mcp_payload(payload)
    except McpError:
        return
    assert isinstance(message, McpResponse | McpNotification | McpRequest)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_fuzz_arbitrary_json(payload: object) -> None:
    _parse_or_error(payload)


@settings(max_examples=500, deadline=None)
@given(_near_valid)
def test_fuzz_near_valid_objects(payload: dict[str, Any]) -> None:
    _parse_or_error(payload)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_fuzz_result_parsers(result: object) -> None:
    for parser in (mcp.parse_tools_list_result, mcp.parse_tool_call_result, mcp.parse_initialize_result):
        with contextlib.suppress(McpError):
            parser(result)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["name", "description", "inputSchema"]), _values), max_size=3))
def test_fuzz_tool_descriptors(tools: list[dict[str, Any]]) -> None:
    try:
        page = mcp.parse_tools_list_result({"tools": tools})
    except McpError:
        return
    assert all(tool.name and isinstance(tool.input_schema, dict) for tool in page.tools)


def test_firmware_error_without_a_code_is_still_an_error_answer() -> None:
    # McpServer::ReplyError in the firmware sends only a message.
    response = parse_mcp_payload({"jsonrpc": "2.0", "id": 7, "error": {"message": "codec not ready"}})
    assert isinstance(response, McpResponse) and not response.ok
    assert response.error is not None and response.error.message == "codec not ready"
    assert response.error.code == -32603
