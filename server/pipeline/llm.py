"""Language-model providers: a deterministic offline one (``local``) and any OpenAI-compatible chat API.

A provider streams :class:`LlmDelta` items: text fragments as they come (so the sentence splitter can
start TTS on the first sentence) and tool calls, each only once complete.  Tools are the device's MCP
tools (``self.audio_speaker.set_volume``…) described by JSON schema.
"""

from __future__ import annotations

import asyncio
import json
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

import httpx

from server.pipeline.registry import (
    LocalLlmConfig,
    OpenAiLlmConfig,
    ProviderError,
    http_errors,
    parse_json,
    raise_for_status,
)

__all__ = ["ChatMessage", "LlmDelta", "LlmProvider", "LocalLlm", "OpenAiLlm", "ToolCall", "ToolSpec"]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call; ``parameters`` is its JSON schema (an MCP tool's ``inputSchema``)."""

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True)
class ChatMessage:
    """One message of the dialogue: role is system, user, assistant (maybe with tool calls) or tool."""

    role: str
    content: str
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None  # role "tool": which call this is the result of


@dataclass(frozen=True)
class LlmDelta:
    """Either a text fragment (``text``) or one complete tool call (``tool_call``), never both."""

    text: str = ""
    tool_call: ToolCall | None = None

    def __post_init__(self) -> None:
        if self.text and self.tool_call is not None:
            raise ValueError("an LlmDelta carries text or a tool call, not both")


class LlmProvider(ABC):
    name: ClassVar[str]

    @abstractmethod
    def stream(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]) -> AsyncIterator[LlmDelta]:
        """The reply to ``messages`` as it is produced (implementations are ``async def`` generators)."""

    async def close(self) -> None:  # noqa: B027 - most providers hold nothing to release
        """Release clients; the provider is not used afterwards."""


# ---- local, rule-based ------------------------------------------------------------------------------------

VOLUME_TOOL = "self.audio_speaker.set_volume"
LIGHT_TOOL = "self.light.set_rgb"
STATUS_TOOL = "self.get_device_status"

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_CN_DIGITS = dict(zip("零〇一二两三四五六七八九", (0, 0, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9), strict=True))
_EN_NUMBERS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100,
}  # fmt: skip
_NUMBER = re.compile(
    r"\d{1,3}|[零〇一二两三四五六七八九十百]+|\b(?:"
    + "|".join(_EN_NUMBERS)
    + r")(?:[ -](?:one|two|three|four|five|six|seven|eight|nine))?\b"
)
# (English names, Chinese names) → RGB
_COLOURS: list[tuple[tuple[str, ...], tuple[str, ...], tuple[int, int, int]]] = [
    (("red",), ("红",), (255, 0, 0)),
    (("green",), ("绿",), (0, 255, 0)),
    (("blue",), ("蓝",), (0, 0, 255)),
    (("yellow",), ("黄",), (255, 255, 0)),
    (("purple", "violet"), ("紫",), (128, 0, 255)),
    (("orange",), ("橙", "橘"), (255, 128, 0)),
    (("pink",), ("粉",), (255, 105, 180)),
    (("cyan",), ("青",), (0, 255, 255)),
    (("white",), ("白",), (255, 255, 255)),
    (("off", "black"), ("关", "黑"), (0, 0, 0)),
]


def _cn_number(text: str) -> int | None:
    """Chinese numerals up to 百: 三十 → 30, 四十五 → 45, 十 → 10, 一百 → 100, 三五 → None."""
    if text in ("百", "一百"):
        return 100
    if "百" in text:
        return None
    if "十" in text:
        tens, _, ones = text.partition("十")
        if (tens and tens not in _CN_DIGITS) or (ones and ones not in _CN_DIGITS):
            return None
        return (_CN_DIGITS[tens] if tens else 1) * 10 + (_CN_DIGITS[ones] if ones else 0)
    return _CN_DIGITS[text] if len(text) == 1 and text in _CN_DIGITS else None


def _number_in(text: str) -> int | None:
    """The first number in ``text``, preferring one after "to"/"到" ("调一下音量到三十" → 30, not 1)."""
    target = re.search(r"(?:到|成|为|\bto\b|\bat\b)\s*", text)
    if target is not None and (value := _first_number(text[target.end() :])) is not None:
        return value
    return _first_number(text)


def _first_number(text: str) -> int | None:
    for match in _NUMBER.finditer(text):
        token = match.group(0)
        if token.isdigit():
            return int(token)
        if _CJK.match(token):
            if (value := _cn_number(token)) is not None:
                return value
            continue
        words = re.split(r"[ -]", token)
        return sum(_EN_NUMBERS[word] for word in words)
    return None


def _colour_in(text: str, chinese: bool) -> tuple[int, int, int] | None:
    for english, cn_names, rgb in _COLOURS:
        if chinese and any(name in text for name in cn_names):
            return rgb
        if not chinese and any(re.search(rf"\b{word}\b", text) for word in english):
            return rgb
    return None


def _rgb_arguments(spec: ToolSpec, rgb: tuple[int, int, int]) -> dict[str, Any]:
    """Fit the colour to the tool's schema: r/g/b (the xiaozhi firmware), red/green/blue, or a hex string."""
    properties = spec.parameters.get("properties", {}) if isinstance(spec.parameters, dict) else {}
    for names in (("r", "g", "b"), ("red", "green", "blue")):
        if all(name in properties for name in names):
            return dict(zip(names, rgb, strict=True))
    if "color" in properties or "colour" in properties:
        return {"color" if "color" in properties else "colour": "#{:02x}{:02x}{:02x}".format(*rgb)}
    return {"r": rgb[0], "g": rgb[1], "b": rgb[2]}


def _summarise_result(result: str, limit: int = 160) -> str:
    """A tool's result text made speakable: JSON objects become "key value, key value" of their leaves."""
    try:
        data = json.loads(result)
    except ValueError:
        data = None
    if isinstance(data, dict):
        leaves: list[str] = []

        def walk(node: Any, key: str) -> None:
            if isinstance(node, dict):
                for sub_key, value in node.items():
                    walk(value, str(sub_key))
            elif not isinstance(node, list) and len(leaves) < 6:
                leaves.append(f"{key.replace('_', ' ')} {node}")

        walk(data, "")
        text = ", ".join(leaves)
    else:
        text = " ".join(result.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _failed(result: str) -> bool:
    lowered = result.strip().lower()
    if lowered in ("false", "error") or lowered.startswith(("error", "failed")):
        return True
    return re.search(r'"iserror"\s*:\s*true', lowered) is not None


@dataclass(frozen=True)
class _Reply:
    text: str = ""
    tool_call: ToolCall | None = None


class LocalLlm(LlmProvider):
    """A deterministic, offline, instant stand-in for a real model, in Chinese and English.

    It understands greetings, the time and date, "who are you", thanks and goodbyes, and drives the
    device's MCP tools when they are offered: volume (``self.audio_speaker.set_volume``), light colour
    (``self.light.set_rgb``) and status (``self.get_device_status``).  After a tool result it confirms in
    the user's language.  Anything else gets a polite fallback repeating what it understood.
    """

    name = "local"

    def __init__(self, *, chunk_delay_s: float = 0.0, clock: Callable[[], datetime] = datetime.now) -> None:
        self.chunk_delay_s = chunk_delay_s
        self._clock = clock  # injectable so tests can pin the time

    @classmethod
    def from_config(cls, config: LocalLlmConfig) -> LocalLlm:
        return cls(chunk_delay_s=config.chunk_delay_s)

    async def stream(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]) -> AsyncIterator[LlmDelta]:
        reply = self.reply(messages, tools)
        if reply.tool_call is not None:
            yield LlmDelta(tool_call=reply.tool_call)
            return
        for chunk in _chunks(reply.text):
            yield LlmDelta(text=chunk)
            # Real models stream; pausing (or at least yielding) lets callers overlap TTS with generation.
            await asyncio.sleep(self.chunk_delay_s)

    # -- decisions

    def reply(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]) -> _Reply:
        if messages and messages[-1].role == "tool":
            return _Reply(self._after_tool(messages))
        user = next((m.content for m in reversed(messages) if m.role == "user"), "")
        chinese = bool(_CJK.search(user))
        text = user.strip().lower()
        offered = {tool.name: tool for tool in tools}
        call_number = 1 + sum(len(m.tool_calls or ()) for m in messages)

        def say(zh: str, en: str) -> _Reply:
            return _Reply(zh if chinese else en)

        def call(name: str, arguments: dict[str, Any]) -> _Reply:
            return _Reply(tool_call=ToolCall(f"call_local_{call_number}", name, arguments))

        if not text:
            return say("我没听清，请再说一遍。", "Sorry, I didn't catch that. Could you say it again?")

        if "音量" in text or "声音" in text or re.search(r"\bvolume\b", text):
            volume = _number_in(text)
            if volume is None:
                return say("要把音量调到多少？", "What volume would you like, from 0 to 100?")
            if VOLUME_TOOL not in offered:
                return say("抱歉，这个设备不能调节音量。", "Sorry, I can't change the volume on this device.")
            return call(VOLUME_TOOL, {"volume": max(0, min(100, volume))})

        if "灯" in text or re.search(r"\b(light|lamp|led)s?\b", text):
            rgb = _colour_in(text, chinese)
            if rgb is not None and LIGHT_TOOL in offered:
                return call(LIGHT_TOOL, _rgb_arguments(offered[LIGHT_TOOL], rgb))
            if rgb is not None:
                return say("抱歉，这个设备不能控制灯光。", "Sorry, I can't control the light on this device.")

        if "状态" in text or re.search(r"\bstatus\b", text):
            if STATUS_TOOL in offered:
                return call(STATUS_TOOL, {})
            return say("抱歉，我查不到设备状态。", "Sorry, I can't read the device status.")

        now = self._clock()
        if any(w in text for w in ("几点", "时间")) or re.search(r"\bwhat time\b|\btime is it\b", text):
            if chinese:
                return _Reply(f"现在是{now.hour}点{now.minute:02d}分。")
            return _Reply(f"It's {now.strftime('%H:%M')}.")
        if any(w in text for w in ("几号", "日期", "星期几")) or re.search(r"\bwhat (day|date)\b", text):
            if chinese:
                weekday = "一二三四五六日"[now.weekday()]
                return _Reply(f"今天是{now.month}月{now.day}日，星期{weekday}。")
            return _Reply(f"Today is {now.strftime('%A, %B')} {now.day}.")
        if any(w in text for w in ("你是谁", "你叫什么", "名字")) or re.search(r"\bwho are you\b|\byour name\b", text):
            if chinese:
                return _Reply("我是小智，你的语音助手。我可以报时，也可以帮你调音量和灯光。")
            return _Reply("I'm Xiaozhi, your voice assistant. I can tell the time and set the volume or the light.")
        if any(w in text for w in ("谢谢", "多谢")) or re.search(r"\bthanks?\b", text):
            return say("不客气！", "You're welcome!")
        if any(w in text for w in ("再见", "拜拜")) or re.search(r"\b(good ?bye|bye)\b", text):
            return say("再见，祝你愉快！", "Goodbye, have a nice day!")
        if any(w in text for w in ("你好", "您好", "嗨", "早上好", "晚上好")) or re.search(
            r"\b(hello|hi|hey|good (morning|afternoon|evening))\b", text
        ):
            return say("你好！有什么可以帮你的吗？", "Hello! How can I help you?")

        heard = " ".join(user.split())
        if chinese:
            return _Reply(f"抱歉，我还不会这个。我听到的是：“{heard}”。")
        return _Reply(f'Sorry, I can\'t help with that yet. I heard: "{heard}".')

    def _after_tool(self, messages: Sequence[ChatMessage]) -> str:
        """Confirm the tool calls whose results end ``messages``."""
        results: list[ChatMessage] = []
        for message in reversed(messages):
            if message.role != "tool":
                break
            results.insert(0, message)
        calls = {call.id: call for m in messages if m.tool_calls for call in m.tool_calls}
        user = next((m.content for m in reversed(messages) if m.role == "user"), "")
        chinese = bool(_CJK.search(user))
        sentences = []
        for result in results:
            call = calls.get(result.tool_call_id or "")
            sentences.append(_confirmation(call, result.content, chinese))
        return ("" if chinese else " ").join(sentences)


def _confirmation(call: ToolCall | None, result: str, chinese: bool) -> str:
    summary = _summarise_result(result)
    if _failed(result):
        return f"抱歉，操作没有成功：{summary}。" if chinese else f"Sorry, that didn't work: {summary}."
    name = call.name if call else ""
    if name == VOLUME_TOOL:
        volume = call.arguments.get("volume") if call else None
        return f"好的，音量已调到{volume}。" if chinese else f"OK, the volume is now {volume}."
    if name == LIGHT_TOOL:
        return "好的，灯光已经调好了。" if chinese else "OK, the light is set."
    if name == STATUS_TOOL:
        return f"设备状态：{summary}。" if chinese else f"Here is the device status: {summary}."
    return f"好的，完成了：{summary}。" if chinese else f"Done: {summary}."


def _chunks(text: str, parts: int = 4) -> list[str]:
    """Split ``text`` into a few pieces at word (or, for Chinese, character) boundaries, like a model streams."""
    if not text:
        return []
    pieces = re.findall(r"\S+\s*", text) if " " in text else list(text)
    size = max(1, -(-len(pieces) // parts))
    return ["".join(pieces[i : i + size]) for i in range(0, len(pieces), size)]


# ---- OpenAI-compatible HTTP ------------------------------------------------------------------------------

_FUNCTION_NAME = re.compile(r"[^A-Za-z0-9_-]")


def _function_names(tools: Sequence[ToolSpec]) -> dict[str, str]:
    """Original tool name → a name the OpenAI API accepts (``^[A-Za-z0-9_-]{1,64}$``; MCP names have dots)."""
    names: dict[str, str] = {}
    used: set[str] = set()
    for tool in tools:
        base = _FUNCTION_NAME.sub("_", tool.name)[:64] or "tool"
        candidate, n = base, 2
        while candidate in used:
            suffix = f"_{n}"
            candidate, n = base[: 64 - len(suffix)] + suffix, n + 1
        used.add(candidate)
        names[tool.name] = candidate
    return names


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: str = ""


class OpenAiLlm(LlmProvider):
    """``POST {base_url}/chat/completions`` with ``stream: true`` (server-sent events), OpenAI function tools.

    Works with any compatible service (OpenAI, Qwen/DashScope, DeepSeek, Ollama, LM Studio…).  Tool-call
    fragments are assembled by their ``index`` and yielded once the stream says they are complete.
    ``timeout_s`` bounds the connection and every wait for the next bytes of the stream.
    """

    name = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(timeout_s))

    @classmethod
    def from_config(cls, config: OpenAiLlmConfig) -> OpenAiLlm:
        return cls(
            base_url=config.base_url,
            model=config.model,
            api_key=config.api_key,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            timeout_s=config.timeout_s,
        )

    def request_body(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]) -> dict[str, Any]:
        names = _function_names(tools)
        body: dict[str, Any] = {
            "model": self.model,
            "stream": True,
            "messages": [_wire_message(message, names) for message in messages],
        }
        if tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {"name": names[t.name], "description": t.description, "parameters": t.parameters},
                }
                for t in tools
            ]
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body

    async def stream(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]) -> AsyncIterator[LlmDelta]:
        originals = {wire: name for name, wire in _function_names(tools).items()}
        body = self.request_body(messages, tools)
        partial: dict[int, _PartialCall] = {}
        events = 0
        with http_errors("LLM", self.url):
            async with self._client.stream("POST", self.url, json=body) as response:
                await raise_for_status(response)
                async for data in _sse_data(response):
                    if data == "[DONE]":
                        break
                    event = parse_json("LLM", data)
                    events += 1
                    if not isinstance(event, dict):
                        raise ProviderError(f"LLM service sent an unexpected event: {data[:120]}")
                    if "error" in event:
                        raise ProviderError(f"LLM service reported an error: {str(event['error'])[:200]}")
                    for choice in event.get("choices") or []:
                        delta = choice.get("delta") or {}
                        if content := delta.get("content"):
                            yield LlmDelta(text=content)
                        for fragment in delta.get("tool_calls") or []:
                            _merge_fragment(partial, fragment)
                        if choice.get("finish_reason") and partial:
                            for call in _complete_calls(partial, originals):
                                yield LlmDelta(tool_call=call)
        if events == 0:
            raise ProviderError(f"LLM service at {self.url} sent no events (not an SSE stream?)")
        for call in _complete_calls(partial, originals):  # streams that end without a finish_reason
            yield LlmDelta(tool_call=call)

    async def close(self) -> None:
        await self._client.aclose()


def _wire_message(message: ChatMessage, names: dict[str, str]) -> dict[str, Any]:
    wire: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        wire["content"] = message.content or None
        wire["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {
                    "name": names.get(call.name) or _FUNCTION_NAME.sub("_", call.name)[:64],
                    "arguments": json.dumps(call.arguments, ensure_ascii=False),
                },
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        wire["tool_call_id"] = message.tool_call_id
    return wire


async def _sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event (multi-line data joined by newlines); comments skipped."""
    lines: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
        elif line.startswith("data:"):
            lines.append(line[5:].removeprefix(" "))
        elif line.startswith(":") or line.split(":", 1)[0] in ("event", "id", "retry"):
            continue
        else:
            raise ProviderError(f"LLM service sent a line that is not server-sent events: {line[:120]}")
    if lines:
        yield "\n".join(lines)


def _merge_fragment(partial: dict[int, _PartialCall], fragment: dict[str, Any]) -> None:
    index = fragment.get("index", len(partial))
    if not isinstance(index, int):
        raise ProviderError(f"LLM service sent a tool call with index {index!r}")
    call = partial.setdefault(index, _PartialCall())
    call.id = fragment.get("id") or call.id
    function = fragment.get("function") or {}
    call.name += function.get("name") or ""
    call.arguments += function.get("arguments") or ""


def _complete_calls(partial: dict[int, _PartialCall], originals: dict[str, str]) -> list[ToolCall]:
    calls = []
    for index in sorted(partial):
        pending = partial[index]
        if not pending.name:
            raise ProviderError(f"LLM service sent a tool call without a name (index {index})")
        try:
            arguments = json.loads(pending.arguments) if pending.arguments.strip() else {}
        except ValueError:
            raise ProviderError(
                f"LLM tool call {pending.name} has invalid JSON arguments: {pending.arguments[:120]}"
            ) from None
        if not isinstance(arguments, dict):
            raise ProviderError(f"LLM tool call {pending.name} arguments are not an object: {pending.arguments[:120]}")
        calls.append(ToolCall(pending.id or f"call_{index}", originals.get(pending.name, pending.name), arguments))
    partial.clear()
    return calls
