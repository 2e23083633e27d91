"""Wire format of the xiaozhi ESP32 device protocol (../shared/spec/protocol.md §1).

Pure functions and frozen dataclasses only: no I/O, no asyncio.  The device server and the device
simulator both build on these modules:

* :mod:`.framing`  — binary WebSocket frames, protocol versions 1/2/3
* :mod:`.messages` — JSON text frames: device → server parsing, server → device builders
* :mod:`.server_messages` — server → device parsing (what a device or the simulator reads)
* :mod:`.mcp`      — JSON-RPC 2.0 / MCP payloads carried in ``mcp`` messages
* :mod:`.auth`     — HMAC device tokens (Python reference server format)
* :mod:`.headers`  — connection identity from handshake headers / query parameters
"""

from server.protocol.auth import AuthError, make_token, parse_authorization, verify_token
from server.protocol.framing import SUPPORTED_VERSIONS, BinaryFrame, FrameError, decode_frame, encode_frame
from server.protocol.headers import ConnectionInfo, HandshakeError, parse_connection
from server.protocol.mcp import McpError, McpNotification, McpRequest, McpResponse, McpTool, parse_mcp_payload
from server.protocol.messages import (
    Abort,
    AudioParams,
    DeviceMessage,
    Goodbye,
    Hello,
    Iot,
    Listen,
    Mcp,
    MessageError,
    Ping,
    UnknownMessageType,
    parse_device_message,
)

__all__ = [
    "SUPPORTED_VERSIONS",
    "Abort",
    "AudioParams",
    "AuthError",
    "BinaryFrame",
    "ConnectionInfo",
    "DeviceMessage",
    "FrameError",
    "Goodbye",
    "HandshakeError",
    "Hello",
    "Iot",
    "Listen",
    "Mcp",
    "McpError",
    "McpNotification",
    "McpRequest",
    "McpResponse",
    "McpTool",
    "MessageError",
    "Ping",
    "UnknownMessageType",
    "decode_frame",
    "encode_frame",
    "make_token",
    "parse_authorization",
    "parse_connection",
    "parse_device_message",
    "parse_mcp_payload",
    "verify_token",
]
