"""The device side of MCP (protocol.md §1.6): the simulated device's tools, answered like the firmware.

On the xiaozhi channel the device is the MCP *server*: the backend sends ``initialize``, ``tools/list``
(paged with ``nextCursor``) and ``tools/call``; the device answers.  :class:`DeviceMcpServer` implements
that over a :class:`DeviceState` the tools read and change, with the firmware's stock tools
(``self.get_device_status``, ``self.audio_speaker.set_volume``, ``self.screen.set_brightness``) plus a
``self.light.set_rgb`` light, and lets callers add their own tools.

Like the firmware, ``tools/list`` pages by payload size with the next tool's *name* as cursor, and the
"user-only" tools are listed only with ``withUserTools: true``.  Argument checking follows the declared
JSON schema: a missing or mistyped argument, or a value out of the declared range (volume 150: "Property
'volume': value 150 exceeds maximum 100", the firmware's words), is a JSON-RPC error (-32602), as the firmware
answers; the reference servers pass that message on to their LLM (an ``isError`` result's text they drop).
A tool that fails while running (:class:`ToolFailure`) answers a result with ``isError: true``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from server.protocol import mcp

__all__ = ["DeviceMcpServer", "DeviceState", "ToolCallRecord", "ToolFailure"]

MAX_PAGE_BYTES = 8000  # firmware GetToolsList max_payload_size


@dataclass
class DeviceState:
    """What a board's tools control and report; the simulator UI shows and edits the same object."""

    volume: int = 70
    brightness: int = 75
    theme: str = "light"
    battery_level: int = 88
    charging: bool = False
    ssid: str = "xiaozhi-sim"
    rssi: int = -52
    light_on: bool = False
    rgb: tuple[int, int, int] = (255, 255, 255)

    def status(self) -> dict[str, Any]:
        """``Board::GetDeviceStatusJson`` shape."""
        signal = "strong" if self.rssi >= -60 else "medium" if self.rssi >= -75 else "weak"
        return {
            "audio_speaker": {"volume": self.volume},
            "screen": {"brightness": self.brightness, "theme": self.theme},
            "battery": {"level": self.battery_level, "charging": self.charging},
            "network": {"type": "wifi", "ssid": self.ssid, "rssi": self.rssi, "signal": signal},
            "light": {"on": self.light_on, "rgb": list(self.rgb)},
        }


class ToolFailure(Exception):
    """Raised by a tool handler: the device refuses the call; answered as ``isError: true``."""


class _InvalidArguments(Exception):
    pass


ToolHandler = Callable[[dict[str, Any]], Any]  # returns str, bool or a JSON-able value


@dataclass(frozen=True, slots=True)
class _Tool:
    spec: mcp.McpTool
    handler: ToolHandler
    user_only: bool = False


@dataclass(frozen=True, slots=True)
class ToolCallRecord:
    name: str
    arguments: dict[str, Any]
    result_text: str
    is_error: bool


def _int_property(description: str, minimum: int, maximum: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": minimum, "maximum": maximum, "description": description}


@dataclass
class DeviceMcpServer:
    state: DeviceState = field(default_factory=DeviceState)
    name: str = "xiaozhi-simulator"  # serverInfo.name = BOARD_NAME in the firmware
    version: str = "1.6.2"
    max_page_bytes: int = MAX_PAGE_BYTES
    # The firmware's McpServer::ReplyError sends {"error": {"message": …}} without "code"; False mimics
    # that exactly, to check a server copes with real devices.
    error_codes: bool = True
    calls: list[ToolCallRecord] = field(default_factory=list, init=False)
    vision: dict[str, Any] | None = field(default=None, init=False)  # initialize's capabilities.vision
    initialized: bool = field(default=False, init=False)
    lists_served: int = field(default=0, init=False)
    _tools: dict[str, _Tool] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._add_stock_tools()

    # ---- tools ------------------------------------------------------------------------------------

    def add_tool(
        self, spec: mcp.McpTool, handler: ToolHandler, *, user_only: bool = False, replace: bool = False
    ) -> None:
        """Offer another tool (listed after the stock ones), or with ``replace`` change one's behaviour."""
        if spec.name in self._tools and not replace:
            raise ValueError(f"tool {spec.name} already added")
        self._tools[spec.name] = _Tool(spec, handler, user_only)

    def _error(self, request_id: mcp.RequestId, code: int, message: str) -> dict[str, Any]:
        response = mcp.error_response(request_id, code, message)
        if not self.error_codes:
            del response["error"]["code"]
        return response

    @property
    def tools(self) -> list[mcp.McpTool]:
        return [tool.spec for tool in self._tools.values()]

    def _add_stock_tools(self) -> None:
        state = self.state

        def set_volume(args: dict[str, Any]) -> bool:
            state.volume = args["volume"]
            return True

        def set_brightness(args: dict[str, Any]) -> bool:
            state.brightness = args["brightness"]
            return True

        def set_rgb(args: dict[str, Any]) -> bool:
            state.rgb = (args["r"], args["g"], args["b"])
            state.light_on = state.rgb != (0, 0, 0)
            return True

        def turn_light(on: bool) -> ToolHandler:
            def handler(args: dict[str, Any]) -> bool:
                state.light_on = on
                return True

            return handler

        no_args: dict[str, Any] = {"type": "object", "properties": {}}
        self.add_tool(
            mcp.McpTool(
                "self.get_device_status",
                "Provides the real-time information of the device, including the current status of the audio "
                "speaker, screen, battery, network, etc.\nUse this tool for: \n1. Answering questions about current "
                "condition (e.g. what is the current volume of the audio speaker?)\n2. As the first step to control "
                "the device (e.g. turn up / down the volume of the audio speaker, etc.)",
                no_args,
            ),
            lambda args: state.status(),
        )
        self.add_tool(
            mcp.McpTool(
                "self.audio_speaker.set_volume",
                "Set the volume of the audio speaker. If the current volume is unknown, you must call "
                "`self.get_device_status` tool first and then call this tool.",
                {"type": "object", "properties": {"volume": _int_property("0-100", 0, 100)}, "required": ["volume"]},
            ),
            set_volume,
        )
        self.add_tool(
            mcp.McpTool(
                "self.screen.set_brightness",
                "Set the brightness of the screen.",
                {
                    "type": "object",
                    "properties": {"brightness": _int_property("0-100", 0, 100)},
                    "required": ["brightness"],
                },
            ),
            set_brightness,
        )
        channel = {name: _int_property(f"{name} channel 0-255", 0, 255) for name in ("r", "g", "b")}
        self.add_tool(
            mcp.McpTool(
                "self.light.set_rgb",
                "Set the colour of the light (each channel 0-255); black turns it off.",
                {"type": "object", "properties": channel, "required": ["r", "g", "b"]},
            ),
            set_rgb,
        )
        self.add_tool(mcp.McpTool("self.light.turn_on", "Turn the light on.", no_args), turn_light(True))
        self.add_tool(mcp.McpTool("self.light.turn_off", "Turn the light off.", no_args), turn_light(False))
        self.add_tool(
            mcp.McpTool("self.get_system_info", "Get the system information", no_args),
            lambda args: {"board": self.name, "version": self.version, "simulated": True},
            user_only=True,
        )

    # ---- JSON-RPC ---------------------------------------------------------------------------------

    def handle(self, payload: object) -> dict[str, Any] | None:
        """Answer one JSON-RPC object from the server; None when no answer is due (notifications,
        responses, or garbage the firmware would ignore: it cannot even address an error to it)."""
        try:
            message = mcp.parse_mcp_payload(payload)
        except mcp.McpError:
            return None
        if not isinstance(message, mcp.McpRequest):
            return None
        params = message.params if isinstance(message.params, dict) else {}
        if message.params is not None and not isinstance(message.params, dict):
            return self._error(message.id, mcp.INVALID_PARAMS, "params must be an object")
        if message.method == "initialize":
            capabilities = params.get("capabilities")
            if isinstance(capabilities, dict) and isinstance(capabilities.get("vision"), dict):
                self.vision = capabilities["vision"]
            self.initialized = True
            return mcp.result(message.id, mcp.initialize_result(self.name, self.version))
        if message.method == "tools/list":
            return self._tools_list(message.id, params)
        if message.method == "tools/call":
            return self._tools_call(message.id, params)
        return self._error(message.id, mcp.METHOD_NOT_FOUND, f"Method not implemented: {message.method}")

    def _tools_list(self, request_id: mcp.RequestId, params: dict[str, Any]) -> dict[str, Any]:
        cursor = params.get("cursor") if isinstance(params.get("cursor"), str) else ""
        with_user = params.get("withUserTools") is True
        names = list(self._tools)
        if cursor:
            if cursor not in self._tools:
                return self._error(request_id, mcp.INVALID_PARAMS, f"Unknown cursor: {cursor}")
            names = names[names.index(cursor) :]
        page: list[mcp.McpTool] = []
        size = len('{"tools":[],"nextCursor":""}')
        next_cursor = ""
        for name in names:
            tool = self._tools[name]
            if tool.user_only and not with_user:
                continue
            tool_size = len(json.dumps(tool.spec.to_dict(), ensure_ascii=False).encode()) + 1
            if page and size + tool_size + len(name) > self.max_page_bytes:
                next_cursor = name  # the firmware's cursor is the first tool of the next page
                break
            page.append(tool.spec)
            size += tool_size
        self.lists_served += 1
        return mcp.result(request_id, mcp.tools_list_result(page, next_cursor))

    def _tools_call(self, request_id: mcp.RequestId, params: dict[str, Any]) -> dict[str, Any]:
        name = params.get("name")
        if not isinstance(name, str):
            return self._error(request_id, mcp.INVALID_PARAMS, "Missing name")
        tool = self._tools.get(name)
        if tool is None:
            return self._error(request_id, mcp.METHOD_NOT_FOUND, f"Unknown tool: {name}")
        arguments = params.get("arguments", {})
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            return self._error(request_id, mcp.INVALID_PARAMS, "Invalid arguments")
        try:
            checked = _check_arguments(tool.spec.input_schema, arguments)
            value = tool.handler(checked)
            text, is_error = _result_text(value), False
        except _InvalidArguments as exc:
            self.calls.append(ToolCallRecord(name, dict(arguments), str(exc), True))
            return self._error(request_id, mcp.INVALID_PARAMS, str(exc))
        except ToolFailure as exc:
            text, is_error = str(exc), True
        except Exception as exc:  # a broken tool answers an error, like the firmware's catch-all
            return self._error(request_id, mcp.INTERNAL_ERROR, str(exc) or type(exc).__name__)
        self.calls.append(ToolCallRecord(name, dict(arguments), text, is_error))
        return mcp.result(request_id, mcp.tool_result_text(text, is_error))


def _result_text(value: Any) -> str:
    """The firmware's ReturnValue: bool → "true"/"false", str as is, JSON objects serialised."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _check_arguments(schema: dict[str, Any], arguments: dict[str, Any]) -> dict[str, Any]:
    """Types, required names and integer ranges per the tool's schema (see the module doc)."""
    properties = schema.get("properties", {}) if isinstance(schema.get("properties"), dict) else {}
    required = schema.get("required", []) if isinstance(schema.get("required"), list) else []
    checked: dict[str, Any] = {}
    for name, spec in properties.items():
        if name not in arguments:
            if name in required:
                raise _InvalidArguments(f"Missing valid argument: {name}")
            if isinstance(spec, dict) and "default" in spec:
                checked[name] = spec["default"]
            continue
        value = arguments[name]
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind == "integer":
            # LLMs send 30.0 or "30" now and then; the firmware's cJSON takes any number as int.
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise _InvalidArguments(f"Missing valid argument: {name} (an integer is required)")
            # the firmware's Property::set_value throws these, and DoToolCall answers them as a JSON-RPC error
            low, high = spec.get("minimum"), spec.get("maximum")
            if low is not None and value < low:
                raise _InvalidArguments(f"Property '{name}': value {value} is below minimum {low}")
            if high is not None and value > high:
                raise _InvalidArguments(f"Property '{name}': value {value} exceeds maximum {high}")
        elif kind == "string" and not isinstance(value, str):
            raise _InvalidArguments(f"Missing valid argument: {name} (a string is required)")
        elif kind == "boolean" and not isinstance(value, bool):
            raise _InvalidArguments(f"Missing valid argument: {name} (a boolean is required)")
        checked[name] = value
    return checked
