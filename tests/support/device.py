"""A minimal scripted device for server tests: speaks the real protocol over a real socket.

(The full simulator lives in ``simulator/``; this stays small so server tests read as protocol.)
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from server.protocol import framing, mcp

VOLUME_TOOL = mcp.McpTool(
    "self.audio_speaker.set_volume",
    "Set the speaker volume (0-100).",
    {
        "type": "object",
        "properties": {"volume": {"type": "integer", "minimum": 0, "maximum": 100}},
        "required": ["volume"],
    },
)


@dataclass
class Reply:
    """Everything the server sent for one turn, up to and including ``tts stop``."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    audio: list[tuple[float, bytes]] = field(default_factory=list)  # (arrival time, opus packet)
    stop_at: float = 0.0

    def of_type(self, kind: str, state: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind and (state is None or m.get("state") == state)]


class ScriptedDevice:
    def __init__(self, ws: ClientConnection, version: int = 1) -> None:
        self.ws = ws
        self.version = version
        self.session_id = ""
        self.tools: list[mcp.McpTool] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.volume = 50
        self._inbox: asyncio.Queue[str | bytes | ConnectionClosed] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls, url: str, device_id: str = "aa:bb:cc:dd:ee:01", version: int = 1, **headers: str
    ) -> ScriptedDevice:
        all_headers = {"Device-Id": device_id, "Client-Id": "c0ffee00-0000-4000-8000-000000000001",
                       "Protocol-Version": str(version), **headers}  # fmt: skip
        ws = await connect(url, additional_headers=all_headers, open_timeout=5, max_size=2**20)
        return cls(ws, version)

    async def hello(self, *, mcp_tools: list[mcp.McpTool] | None = None) -> dict[str, Any]:
        self.tools = mcp_tools or []
        await self.send_json(
            {"type": "hello", "version": self.version, "transport": "websocket", "features": {"mcp": bool(mcp_tools)},
             "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1, "frame_duration": 60}}
        )  # fmt: skip
        reply = json.loads(await asyncio.wait_for(self.ws.recv(), 5))
        self.session_id = reply.get("session_id", "")
        self._reader = asyncio.create_task(self._read())
        return reply

    async def _read(self) -> None:
        """Answer MCP requests as they come (like firmware does); queue everything else for the test."""
        try:
            while True:
                data = await self.ws.recv()
                if isinstance(data, str) and '"mcp"' in data:
                    message = json.loads(data)
                    if message.get("type") == "mcp":
                        await self._answer_mcp(message["payload"])
                        continue
                self._inbox.put_nowait(data)
        except ConnectionClosed as exc:  # also a normal close: recv() raises ConnectionClosedOK
            self._inbox.put_nowait(exc)

    async def recv(self, timeout: float = 10) -> str | bytes:
        item = await asyncio.wait_for(self._inbox.get(), timeout)
        if isinstance(item, ConnectionClosed):
            self._inbox.put_nowait(item)
            raise item
        return item

    async def send_json(self, message: dict[str, Any]) -> None:
        message.setdefault("session_id", self.session_id if hasattr(self, "session_id") else "")
        await self.ws.send(json.dumps(message, ensure_ascii=False))

    async def send_audio(self, packet: bytes) -> None:
        if self.version == 1:
            await self.ws.send(packet)
        else:
            await self.ws.send(framing.encode_frame(self.version, framing.BinaryFrame("audio", packet)))

    async def say(self, text: str) -> Reply:
        await self.send_json({"type": "listen", "state": "detect", "text": text})
        return await self.until_tts_stop()

    async def until_tts_stop(self, timeout: float = 30) -> Reply:
        reply = Reply()
        async with asyncio.timeout(timeout):
            while True:
                data = await self.recv(timeout)
                now = time.monotonic()
                if isinstance(data, bytes):
                    payload = data if self.version == 1 else framing.decode_frame(self.version, data).payload
                    reply.audio.append((now, payload))
                    continue
                message = json.loads(data)
                reply.messages.append(message)
                if message.get("type") == "tts" and message.get("state") == "stop":
                    reply.stop_at = now
                    return reply

    async def _answer_mcp(self, payload: dict[str, Any]) -> None:
        method, rid = payload.get("method"), payload.get("id")
        if method == "initialize":
            result = mcp.initialize_result("test-device", "1.0")
        elif method == "tools/list":
            result = mcp.tools_list_result(self.tools)
        elif method == "tools/call":
            self.tool_calls.append(payload["params"])
            if payload["params"]["name"] == VOLUME_TOOL.name:
                self.volume = int(payload["params"]["arguments"]["volume"])
                result = mcp.tool_result_text(json.dumps({"success": True, "volume": self.volume}))
            else:
                await self.send_json({"type": "mcp", "payload": mcp.error_response(rid, -32601, "unknown tool")})
                return
        else:
            return
        await self.send_json({"type": "mcp", "payload": mcp.result(rid, result)})

    async def close(self) -> None:
        await self.ws.close()
        if self._reader is not None:
            await self._reader
