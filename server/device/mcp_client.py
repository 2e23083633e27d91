"""The server as MCP client of the device (protocol.md §1.6): initialize, list tools, call tools."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from server.protocol.mcp import (
    McpError,
    McpNotification,
    McpRequest,
    McpResponse,
    McpTool,
    ToolCallResult,
    error_response,
    initialize_request,
    parse_initialize_result,
    parse_mcp_payload,
    parse_tool_call_result,
    parse_tools_list_result,
    tools_call_request,
    tools_list_request,
)

log = logging.getLogger(__name__)
MAX_TOOL_PAGES = 20


class McpCallError(Exception):
    """A tool call that failed: the device answered an error, or did not answer in time."""


class DeviceMcpClient:
    def __init__(
        self,
        send_payload: Callable[[dict[str, Any]], Awaitable[None]],
        *,
        timeout_s: float = 30.0,
        on_notification: Callable[[McpNotification], None] | None = None,
    ) -> None:
        self._send = send_payload
        self.timeout_s = timeout_s
        self._on_notification = on_notification
        self._ids = itertools.count(1)
        self._pending: dict[int | str, asyncio.Future[McpResponse]] = {}
        self.tools: list[McpTool] = []
        self.server_name = ""
        self.ready = asyncio.Event()

    async def _request(self, build: Callable[[int], dict[str, Any]], timeout_s: float | None = None) -> McpResponse:
        request_id = next(self._ids)
        future: asyncio.Future[McpResponse] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._send(build(request_id))
            async with asyncio.timeout(timeout_s or self.timeout_s):
                return await future
        except TimeoutError:
            waited = timeout_s or self.timeout_s
            raise McpCallError(f"device did not answer MCP request {request_id} in {waited:.0f} s") from None
        finally:
            self._pending.pop(request_id, None)

    async def initialize(self) -> list[McpTool]:
        """initialize, then tools/list page by page; the tool list is what the LLM may call."""
        response = await self._request(lambda i: initialize_request(i), timeout_s=min(self.timeout_s, 10))
        if not response.ok:
            raise McpCallError(f"initialize refused: {response.error}")
        self.server_name = parse_initialize_result(response.result).server_name
        tools: list[McpTool] = []
        cursor = ""
        for _ in range(MAX_TOOL_PAGES):
            page_response = await self._request(lambda i, c=cursor: tools_list_request(i, c))
            if not page_response.ok:
                raise McpCallError(f"tools/list refused: {page_response.error}")
            page = parse_tools_list_result(page_response.result)
            tools.extend(page.tools)
            if not page.next_cursor:
                break
            cursor = page.next_cursor
        self.tools = tools
        self.ready.set()
        return tools

    async def call(self, name: str, arguments: dict[str, Any] | None = None) -> ToolCallResult:
        response = await self._request(lambda i: tools_call_request(i, name, arguments or {}))
        if not response.ok:
            assert response.error is not None
            raise McpCallError(f"{name} failed: {response.error.message} ({response.error.code})")
        try:
            return parse_tool_call_result(response.result)
        except McpError as exc:
            raise McpCallError(f"{name} returned a malformed result: {exc}") from None

    async def handle(self, payload: object) -> None:
        """A payload from the device's ``mcp`` message."""
        try:
            message = parse_mcp_payload(payload)
        except McpError as exc:
            log.warning("malformed MCP payload from device: %s", exc)
            return
        if isinstance(message, McpResponse):
            future = self._pending.get(message.id) if message.id is not None else None
            if future is not None and not future.done():
                future.set_result(message)
        elif isinstance(message, McpNotification):
            if self._on_notification is not None:
                self._on_notification(message)
        elif isinstance(message, McpRequest):
            # The device is the MCP server; we offer it nothing to call.
            await self._send(error_response(message.id, -32601, f"method {message.method!r} not supported"))

    def close(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(McpCallError("connection closed"))
        for future in self._pending.values():
            with contextlib.suppress(BaseException):
                future.exception()
        self._pending.clear()
