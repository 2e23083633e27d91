"""JSON-RPC 2.0 / MCP objects carried in ``{"type": "mcp", "payload": ...}`` messages (spec §1.6).

On this channel the *device* is the MCP server and the backend the client, so the server builds
requests (``initialize``, ``tools/list``, ``tools/call``) and parses the device's responses and
notifications; the simulator does the opposite with the device-side builders at the bottom.

Everything here works on already-decoded JSON values (the envelope is parsed by
:mod:`server.protocol.messages`).  Parsers raise only :class:`McpError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "CLIENT_INFO",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "JSONRPC_VERSION",
    "MCP_PROTOCOL_VERSION",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "InitializeResult",
    "McpError",
    "McpMessage",
    "McpNotification",
    "McpRequest",
    "McpResponse",
    "McpRpcError",
    "McpTool",
    "RequestId",
    "ToolCallResult",
    "ToolsPage",
    "error_response",
    "initialize_request",
    "initialize_result",
    "notification",
    "parse_initialize_result",
    "parse_mcp_payload",
    "parse_tool_call_result",
    "parse_tools_list_result",
    "result",
    "tool_result_text",
    "tools_call_request",
    "tools_list_request",
    "tools_list_result",
]

JSONRPC_VERSION: Final = "2.0"
# The MCP revision the firmware and the Python reference server speak.
MCP_PROTOCOL_VERSION: Final = "2024-11-05"
CLIENT_INFO: Final = {"name": "XiaozhiClient", "version": "1.0.0"}

# JSON-RPC 2.0 standard error codes; the firmware answers an unknown tool with METHOD_NOT_FOUND.
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603

RequestId = int | str


class McpError(ValueError):
    """A JSON-RPC / MCP object that does not have the required shape."""


@dataclass(frozen=True, slots=True)
class McpRpcError:
    """The ``error`` member of a JSON-RPC response."""

    code: int
    message: str
    data: Any = None


@dataclass(frozen=True, slots=True)
class McpResponse:
    """Exactly one of ``result`` / ``error`` is meaningful; ``id`` is None only for errors the peer
    could not attribute to a request (JSON-RPC allows ``"id": null`` there)."""

    id: RequestId | None
    result: Any = None
    error: McpRpcError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class McpNotification:
    """``method`` without ``id``, e.g. ``notifications/state_changed``; never answered."""

    method: str
    params: dict[str, Any] | list[Any] | None = None


@dataclass(frozen=True, slots=True)
class McpRequest:
    id: RequestId
    method: str
    params: dict[str, Any] | list[Any] | None = None


McpMessage = McpResponse | McpNotification | McpRequest


@dataclass(frozen=True, slots=True)
class McpTool:
    """One entry of a ``tools/list`` result. ``input_schema`` is a JSON Schema object."""

    name: str
    description: str = ""
    input_schema: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "inputSchema": self.input_schema}


@dataclass(frozen=True, slots=True)
class ToolsPage:
    """One ``tools/list`` page; request the next one with ``next_cursor`` until it is empty."""

    tools: tuple[McpTool, ...]
    next_cursor: str = ""


@dataclass(frozen=True, slots=True)
class ToolCallResult:
    content: tuple[dict[str, Any], ...]
    is_error: bool = False

    @property
    def text(self) -> str:
        """The text items joined by newlines (what an LLM gets back as the tool output)."""
        return "\n".join(
            item["text"] for item in self.content if item.get("type") == "text" and isinstance(item.get("text"), str)
        )


@dataclass(frozen=True, slots=True)
class InitializeResult:
    protocol_version: str
    server_name: str
    server_version: str
    capabilities: dict[str, Any]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: object) -> bool:
    # Fractional or boolean ids are legal JSON but not sane JSON-RPC ids; nobody sends them.
    return _is_int(value) or isinstance(value, str)


def _show(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_id(id: object) -> None:
    if not _is_id(id):
        raise ValueError(f"JSON-RPC id must be an int or str, got {id!r}")


# --- server (MCP client) side ------------------------------------------------------------------


def _request(id: RequestId, method: str, params: dict[str, Any]) -> dict[str, Any]:
    _check_id(id)
    return {"jsonrpc": JSONRPC_VERSION, "id": id, "method": method, "params": params}


def initialize_request(id: RequestId, vision_url: str | None = None, vision_token: str | None = None) -> dict[str, Any]:
    """``initialize`` as the Python reference server sends it right after the hello.

    ``capabilities.vision`` tells a camera-equipped device where to post photos for explanation;
    it is left out without a URL (the firmware only reads it when ``url`` is a string).
    """
    capabilities: dict[str, Any] = {"roots": {"listChanged": True}, "sampling": {}}
    if vision_url is not None:
        vision: dict[str, Any] = {"url": vision_url}
        if vision_token is not None:
            vision["token"] = vision_token
        capabilities["vision"] = vision
    params = {"protocolVersion": MCP_PROTOCOL_VERSION, "capabilities": capabilities, "clientInfo": dict(CLIENT_INFO)}
    return _request(id, "initialize", params)


def tools_list_request(id: RequestId, cursor: str = "", with_user_tools: bool = False) -> dict[str, Any]:
    """``withUserTools`` false hides the "user-only" tools, which are not meant for the LLM."""
    return _request(id, "tools/list", {"cursor": cursor, "withUserTools": with_user_tools})


def tools_call_request(id: RequestId, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    return _request(id, "tools/call", {"name": name, "arguments": {} if arguments is None else arguments})


def _parse_params(payload: dict[str, Any]) -> dict[str, Any] | list[Any] | None:
    params = payload.get("params")
    if params is None or isinstance(params, dict | list):
        return params
    raise McpError(f"params must be an object or array, got {_show(params)}")


def _parse_rpc_error(value: object) -> McpRpcError:
    if not isinstance(value, dict):
        raise McpError(f"error must be an object, got {_show(value)}")
    code, message = value.get("code", INTERNAL_ERROR), value.get("message")
    # The firmware's McpServer::ReplyError sends {"message": …} without a code: still an error answer.
    if not _is_int(code):
        raise McpError(f"error.code must be an integer, got {_show(code)}")
    if not isinstance(message, str):
        raise McpError(f"error.message must be a string, got {_show(message)}")
    return McpRpcError(code=code, message=message, data=value.get("data"))


def parse_mcp_payload(payload: object) -> McpMessage:
    """Classify a JSON-RPC 2.0 object: request (method + id), notification (method, no id) or
    response (id + exactly one of result/error). Batches (arrays) are not used on this channel."""
    if not isinstance(payload, dict):
        raise McpError(f"MCP payload must be an object, got {type(payload).__name__}")
    if payload.get("jsonrpc") != JSONRPC_VERSION:
        raise McpError(f"jsonrpc must be '2.0', got {_show(payload.get('jsonrpc'))}")
    if "method" in payload:
        method = payload["method"]
        if not isinstance(method, str) or not method:
            raise McpError(f"method must be a non-empty string, got {_show(method)}")
        if "result" in payload or "error" in payload:
            raise McpError(f"{method}: a request cannot carry result or error")
        params = _parse_params(payload)
        if "id" not in payload:
            return McpNotification(method=method, params=params)
        request_id = payload["id"]
        if not _is_id(request_id):
            raise McpError(f"{method}: id must be an integer or string, got {_show(request_id)}")
        return McpRequest(id=request_id, method=method, params=params)

    if "id" not in payload:
        raise McpError("JSON-RPC object has neither method nor id")
    response_id = payload["id"]
    if response_id is not None and not _is_id(response_id):
        raise McpError(f"response id must be an integer, string or null, got {_show(response_id)}")
    has_result, has_error = "result" in payload, "error" in payload
    if has_result == has_error:
        raise McpError(f"response {_show(response_id)} must have exactly one of result and error")
    if has_error:
        return McpResponse(id=response_id, error=_parse_rpc_error(payload["error"]))
    if response_id is None:
        raise McpError("a successful response needs a non-null id")
    return McpResponse(id=response_id, result=payload["result"])


def parse_initialize_result(result: object) -> InitializeResult:
    """Device answer to ``initialize``: ``{protocolVersion, capabilities, serverInfo{name, version}}``."""
    if not isinstance(result, dict):
        raise McpError(f"initialize result must be an object, got {type(result).__name__}")
    protocol_version = result.get("protocolVersion")
    if not isinstance(protocol_version, str):
        raise McpError(f"initialize result: protocolVersion must be a string, got {_show(protocol_version)}")
    capabilities = result.get("capabilities", {})
    if not isinstance(capabilities, dict):
        raise McpError(f"initialize result: capabilities must be an object, got {_show(capabilities)}")
    info = result.get("serverInfo", {})
    if not isinstance(info, dict):
        raise McpError(f"initialize result: serverInfo must be an object, got {_show(info)}")
    name, version = info.get("name", ""), info.get("version", "")
    if not isinstance(name, str) or not isinstance(version, str):
        raise McpError("initialize result: serverInfo name and version must be strings")
    return InitializeResult(protocol_version, name, version, capabilities)


def _parse_tool(value: object, index: int) -> McpTool:
    if not isinstance(value, dict):
        raise McpError(f"tools[{index}] must be an object, got {type(value).__name__}")
    name = value.get("name")
    if not isinstance(name, str) or not name:
        raise McpError(f"tools[{index}].name must be a non-empty string, got {_show(name)}")
    description = value.get("description")
    if description is None:
        description = ""
    elif not isinstance(description, str):
        raise McpError(f"tool {name}: description must be a string, got {_show(description)}")
    schema = value.get("inputSchema")
    if schema is None:
        return McpTool(name, description)
    if not isinstance(schema, dict):
        raise McpError(f"tool {name}: inputSchema must be an object, got {_show(schema)}")
    return McpTool(name, description, schema)


def parse_tools_list_result(result: object) -> ToolsPage:
    """``{tools: [...], nextCursor?}``; a missing, null or empty ``nextCursor`` ends the listing."""
    if not isinstance(result, dict):
        raise McpError(f"tools/list result must be an object, got {type(result).__name__}")
    tools = result.get("tools")
    if not isinstance(tools, list):
        raise McpError(f"tools/list result: tools must be an array, got {_show(tools)}")
    next_cursor = result.get("nextCursor")
    if next_cursor is None:
        next_cursor = ""
    elif not isinstance(next_cursor, str):
        raise McpError(f"tools/list result: nextCursor must be a string, got {_show(next_cursor)}")
    return ToolsPage(tuple(_parse_tool(tool, i) for i, tool in enumerate(tools)), next_cursor)


def parse_tool_call_result(result: object) -> ToolCallResult:
    """``{content: [{type:"text", text}], isError}``; non-text items are kept but not in ``.text``."""
    if not isinstance(result, dict):
        raise McpError(f"tools/call result must be an object, got {type(result).__name__}")
    content = result.get("content", [])
    if not isinstance(content, list) or not all(isinstance(item, dict) for item in content):
        raise McpError(f"tools/call result: content must be an array of objects, got {_show(content)}")
    is_error = result.get("isError", False)
    if not isinstance(is_error, bool):
        raise McpError(f"tools/call result: isError must be a boolean, got {_show(is_error)}")
    return ToolCallResult(tuple(content), is_error)


# --- device (MCP server) side, used by the simulator -----------------------------------------


def result(id: RequestId, value: Any) -> dict[str, Any]:
    _check_id(id)
    return {"jsonrpc": JSONRPC_VERSION, "id": id, "result": value}


def error_response(id: RequestId | None, code: int, message: str, data: Any = None) -> dict[str, Any]:
    """``id`` may be None when the request's id could not be read (JSON-RPC 2.0 §5)."""
    if id is not None:
        _check_id(id)
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": JSONRPC_VERSION, "id": id, "error": error}


def notification(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """E.g. ``notification("notifications/state_changed", {"newState": ..., "oldState": ...})``."""
    message: dict[str, Any] = {"jsonrpc": JSONRPC_VERSION, "method": method}
    if params is not None:
        message["params"] = params
    return message


def tool_result_text(text: str, is_error: bool = False) -> dict[str, Any]:
    """The ``result`` value of a ``tools/call`` answer, in the firmware's shape."""
    return {"content": [{"type": "text", "text": text}], "isError": is_error}


def initialize_result(name: str, version: str, protocol_version: str = MCP_PROTOCOL_VERSION) -> dict[str, Any]:
    """The ``result`` value of an ``initialize`` answer, in the firmware's shape."""
    return {
        "protocolVersion": protocol_version,
        "capabilities": {"tools": {}},
        "serverInfo": {"name": name, "version": version},
    }


def tools_list_result(tools: Iterable[McpTool], next_cursor: str = "") -> dict[str, Any]:
    """The ``result`` value of a ``tools/list`` answer; like the firmware, ``nextCursor`` only when
    there is a next page."""
    page: dict[str, Any] = {"tools": [tool.to_dict() for tool in tools]}
    if next_cursor:
        page["nextCursor"] = next_cursor
    return page
