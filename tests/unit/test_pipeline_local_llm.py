"""LocalLlm: the offline, rule-based model — answers, MCP tool selection and tool-result follow-ups."""

from __future__ import annotations

from datetime import datetime

import pytest

from server.pipeline.llm import ChatMessage, LlmDelta, LocalLlm, ToolCall, ToolSpec
from server.pipeline.sentences import SentenceSplitter

# The tools a xiaozhi ESP32 firmware announces over MCP (names and schemas as the firmware sends them).
VOLUME = ToolSpec(
    "self.audio_speaker.set_volume",
    "Set the volume of the audio speaker.",
    {
        "type": "object",
        "properties": {"volume": {"type": "integer", "minimum": 0, "maximum": 100}},
        "required": ["volume"],
    },
)
LIGHT = ToolSpec(
    "self.light.set_rgb",
    "Set the RGB color of the light.",
    {
        "type": "object",
        "properties": {name: {"type": "integer", "minimum": 0, "maximum": 255} for name in "rgb"},
        "required": ["r", "g", "b"],
    },
)
STATUS = ToolSpec("self.get_device_status", "Real-time device status (volume, screen, battery, network).")
DEVICE_TOOLS = [STATUS, VOLUME, LIGHT]


async def collect(llm: LocalLlm, messages: list[ChatMessage], tools: list[ToolSpec]) -> list[LlmDelta]:
    return [delta async for delta in llm.stream(messages, tools)]


async def text_of(llm: LocalLlm, messages: list[ChatMessage], tools: list[ToolSpec] | None = None) -> str:
    deltas = await collect(llm, messages, tools or [])
    assert all(d.tool_call is None for d in deltas)
    return "".join(d.text for d in deltas)


async def tool_call_of(llm: LocalLlm, said: str, tools: list[ToolSpec] = DEVICE_TOOLS) -> ToolCall:
    deltas = await collect(llm, [ChatMessage("user", said)], tools)
    assert len(deltas) == 1 and deltas[0].tool_call is not None and not deltas[0].text, deltas
    return deltas[0].tool_call


@pytest.fixture
def llm() -> LocalLlm:
    return LocalLlm(clock=lambda: datetime(2026, 12, 3, 14, 5))


@pytest.mark.parametrize(
    ("said", "volume"),
    [
        ("Set the volume to 30", 30),
        ("please set the volume to thirty five.", 35),
        ("把音量调到30", 30),
        ("音量调到三十", 30),
        ("调一下音量到四十五", 45),
        ("volume 250 please", 100),  # clamped to the tool's range
    ],
)
async def test_volume_request_calls_the_volume_tool(llm: LocalLlm, said: str, volume: int) -> None:
    call = await tool_call_of(llm, said)
    assert call.name == "self.audio_speaker.set_volume"
    assert call.arguments == {"volume": volume}
    assert call.id


@pytest.mark.parametrize(
    ("said", "rgb"),
    [
        ("Turn the light red", {"r": 255, "g": 0, "b": 0}),
        ("make the lights blue please", {"r": 0, "g": 0, "b": 255}),
        ("把灯调成红色", {"r": 255, "g": 0, "b": 0}),
        ("把灯变成绿色", {"r": 0, "g": 255, "b": 0}),
    ],
)
async def test_light_colour_request_calls_the_light_tool(llm: LocalLlm, said: str, rgb: dict[str, int]) -> None:
    call = await tool_call_of(llm, said)
    assert call.name == "self.light.set_rgb"
    assert call.arguments == rgb


async def test_light_tool_arguments_follow_the_offered_schema(llm: LocalLlm) -> None:
    hex_light = ToolSpec("self.light.set_rgb", "Set colour", {"type": "object", "properties": {"color": {}}})
    call = await tool_call_of(llm, "turn the light purple", [hex_light])
    assert call.arguments == {"color": "#8000ff"}


@pytest.mark.parametrize("said", ["What's the device status?", "设备状态怎么样"])
async def test_status_request_calls_the_status_tool(llm: LocalLlm, said: str) -> None:
    call = await tool_call_of(llm, said)
    assert call.name == "self.get_device_status"
    assert call.arguments == {}


@pytest.mark.parametrize(
    ("said", "tools", "expected"),
    [
        ("Set the volume to 30", [], "can't change the volume"),
        ("把音量调到30", [LIGHT], "不能调节音量"),
        ("turn the light red", [VOLUME], "can't control the light"),
        ("what's the device status", [], "can't read the device status"),
    ],
)
async def test_no_tool_call_when_the_tool_is_not_offered(
    llm: LocalLlm, said: str, tools: list[ToolSpec], expected: str
) -> None:
    assert expected in await text_of(llm, [ChatMessage("user", said)], tools)


@pytest.mark.parametrize(
    ("said", "expected"),
    [
        ("Hello!", "Hello! How can I help you?"),
        ("你好", "你好！有什么可以帮你的吗？"),
        ("What time is it?", "It's 14:05."),
        ("现在几点了", "现在是14点05分。"),
        ("Who are you?", "I'm Xiaozhi"),
        ("你是谁", "我是小智"),
        ("Thank you", "You're welcome!"),
        ("谢谢", "不客气！"),
        ("Goodbye", "Goodbye"),
        ("再见", "再见"),
        ("what day is it", "Thursday, December 3"),
    ],
)
async def test_simple_requests(llm: LocalLlm, said: str, expected: str) -> None:
    assert expected in await text_of(llm, [ChatMessage("user", said)], DEVICE_TOOLS)


async def test_unknown_request_gets_a_fallback_repeating_what_was_heard(llm: LocalLlm) -> None:
    assert 'I heard: "Explain quantum gravity."' in await text_of(
        llm, [ChatMessage("user", "Explain  quantum gravity.")]
    )
    assert "我听到的是：“给我讲个笑话”" in await text_of(llm, [ChatMessage("user", "给我讲个笑话")])


@pytest.mark.parametrize(
    ("said", "result", "expected"),
    [
        ("Set the volume to 30", "true", "OK, the volume is now 30."),
        ("把音量调到30", "true", "好的，音量已调到30。"),
        ("turn the light red", '{"success": true}', "OK, the light is set."),
        (
            "what's the device status",
            '{"audio_speaker": {"volume": 30}, "battery": {"level": 80}}',
            "Here is the device status: volume 30, level 80.",
        ),
        ("Set the volume to 30", "Error: speaker unavailable", "Sorry, that didn't work: Error: speaker unavailable."),
    ],
)
async def test_tool_result_gets_a_confirmation(llm: LocalLlm, said: str, result: str, expected: str) -> None:
    history = [ChatMessage("system", "You are Xiaozhi."), ChatMessage("user", said)]
    call = await tool_call_of(llm, said)
    history += [ChatMessage("assistant", "", tool_calls=[call]), ChatMessage("tool", result, tool_call_id=call.id)]
    assert await text_of(llm, history, DEVICE_TOOLS) == expected


async def test_tool_call_ids_are_unique_within_a_dialogue(llm: LocalLlm) -> None:
    first = await tool_call_of(llm, "set the volume to 10")
    history = [
        ChatMessage("user", "set the volume to 10"),
        ChatMessage("assistant", "", tool_calls=[first]),
        ChatMessage("tool", "true", tool_call_id=first.id),
        ChatMessage("assistant", "OK, the volume is now 10."),
        ChatMessage("user", "set the volume to 20"),
    ]
    second = (await collect(llm, history, DEVICE_TOOLS))[0].tool_call
    assert second is not None and second.id != first.id and second.arguments == {"volume": 20}


async def test_reply_is_streamed_in_several_chunks_that_split_into_sentences(llm: LocalLlm) -> None:
    deltas = await collect(llm, [ChatMessage("user", "who are you")], [])
    assert len(deltas) >= 3
    splitter = SentenceSplitter()
    sentences = [s for d in deltas for s in splitter.feed(d.text)] + splitter.flush()
    assert sentences == [
        "I'm Xiaozhi, your voice assistant.",
        "I can tell the time and set the volume or the light.",
    ]
    chinese = await collect(llm, [ChatMessage("user", "你是谁")], [])
    assert len(chinese) >= 3 and "".join(d.text for d in chinese).startswith("我是小智")


def test_delta_is_text_or_tool_call_not_both() -> None:
    with pytest.raises(ValueError):
        LlmDelta(text="hi", tool_call=ToolCall("1", "x", {}))
