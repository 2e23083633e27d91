"""The OpenAI-compatible providers against a real local HTTP server speaking just enough of the OpenAI API.

The server (``http.server`` in a thread) streams chat completions as server-sent events (text and a
tool call split across events), transcribes by describing the WAV it received, and speaks a tone.
The ``model`` field picks a failure: HTTP 500, malformed SSE, a stall, a non-SSE body.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import socket
import threading
import time
import wave
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from server.pipeline.asr import OpenAiAsr
from server.pipeline.llm import ChatMessage, LlmDelta, OpenAiLlm, ToolCall, ToolSpec
from server.pipeline.registry import ProviderError, build_asr, build_llm, build_tts
from server.pipeline.sentences import split_sentences
from server.pipeline.tts import OpenAiTts

API_KEY = "sk-test-0123"
STALL_S = 2.0

VOLUME = ToolSpec(
    "self.audio_speaker.set_volume",
    "Set the volume of the audio speaker.",
    {"type": "object", "properties": {"volume": {"type": "integer"}}, "required": ["volume"]},
)
LIGHT = ToolSpec("self.light.set_rgb", "Set the light colour.", {"type": "object", "properties": {"r": {}}})


def sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return sse({"id": "c1", "object": "chat.completion.chunk", "choices": [choice]})


class FakeOpenAi(BaseHTTPRequestHandler):
    server: FakeServer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append((self.path, dict(self.headers), body))
        if self.headers.get("Authorization") != f"Bearer {API_KEY}":
            return self.reply(401, b'{"error": {"message": "Incorrect API key provided"}}')
        routes = {
            "/v1/chat/completions": self.chat,
            "/v1/audio/transcriptions": self.transcriptions,
            "/v1/audio/speech": self.speech,
        }
        if self.path not in routes:
            return self.reply(404, b'{"error": "no such route"}')
        routes[self.path](body)

    def chat(self, body: bytes) -> None:
        request = json.loads(body)
        model = request["model"]
        if model == "broken":
            return self.reply(500, b'{"error": {"message": "The model is overloaded.\\n Try again later."}}')
        if model == "slow":
            time.sleep(STALL_S)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        if model == "malformed":
            self.wfile.write(chunk({"role": "assistant", "content": "Hi"}) + b"data: {not json\n\n")
            return
        if model == "not-sse":
            self.wfile.write(b"<html>Bad gateway</html>\n")
            return
        if model == "stall":
            self.wfile.write(chunk({"role": "assistant", "content": "Hello."}))
            self.wfile.flush()
            time.sleep(STALL_S)
            return
        if model == "tools":
            parts = [
                chunk({"role": "assistant", "content": None}),
                b": keep-alive comment\n\n",
                chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                       "function": {"name": "self_audio_speaker_set_volume", "arguments": ""}}]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"vol'}}]}),
                chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                       "function": {"name": "self_light_set_rgb", "arguments": '{"r": 255}'}}]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ume": 30}'}}]}),
                chunk({}, finish="tool_calls"),
                b"data: [DONE]\n\n",
            ]  # fmt: skip
        else:
            last = request["messages"][-1]
            reply = f"You said: {last['content']}. It is sunny today! Anything else?"
            pieces = [reply[i : i + 7] for i in range(0, len(reply), 7)]
            parts = [chunk({"role": "assistant", "content": ""})]
            parts += [chunk({"content": piece}) for piece in pieces]
            parts += [chunk({}, finish="stop"), b"data: [DONE]\n\n"]
        for part in parts:
            self.wfile.write(part)
            self.wfile.flush()

    def transcriptions(self, body: bytes) -> None:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body
        )
        fields = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
        model = fields["model"].get_content()
        if model == "broken":
            return self.reply(503, b"upstream unavailable")
        if model == "slow":
            time.sleep(STALL_S)
        with wave.open(io.BytesIO(fields["file"].get_payload(decode=True))) as wav:
            heard = f"{wav.getnframes() / wav.getframerate():.2f} s at {wav.getframerate()} Hz"
        language = fields["language"].get_content() if "language" in fields else "auto"
        self.reply(200, json.dumps({"text": f" heard {heard} in {language} "}).encode())

    def speech(self, body: bytes) -> None:
        request = json.loads(body)
        if request["model"] == "broken":
            return self.reply(500, b"")
        # Half a second of 440 Hz per request, at the rate the format implies.
        rate = 24000 if request["response_format"] == "pcm" else 22050
        pcm = (8000 * np.sin(2 * np.pi * 440 * np.arange(rate // 2) / rate)).astype("<i2")
        if request["response_format"] == "pcm":
            return self.reply(200, pcm.tobytes(), "audio/pcm")
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(rate)
            wav.writeframes(pcm.tobytes())
        self.reply(200, buffer.getvalue(), "audio/wav")


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stalled handlers must not hold up the test's teardown

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FakeOpenAi)
        self.requests: list[tuple[str, dict[str, str], bytes]] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that timed out close their socket under a sleeping handler: expected here

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


@pytest.fixture(scope="module")
def openai_server() -> Iterator[FakeServer]:
    server = FakeServer()
    thread = threading.Thread(target=server.serve_forever, name="fake-openai", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def closed_port_url() -> str:
    """A URL on which nothing listens (the port was just free), so connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def llm(server: FakeServer, model: str = "chat", **kwargs: Any) -> OpenAiLlm:
    return OpenAiLlm(base_url=server.base_url, model=model, api_key=API_KEY, **kwargs)


async def collect(provider: OpenAiLlm, messages: list[ChatMessage], tools: list[ToolSpec]) -> list[LlmDelta]:
    try:
        return [delta async for delta in provider.stream(messages, tools)]
    finally:
        await provider.close()


# ---- LLM -------------------------------------------------------------------------------------------------


async def test_llm_streams_text_that_splits_into_sentences(openai_server: FakeServer) -> None:
    provider = llm(openai_server, temperature=0.2, max_tokens=50)
    deltas = provider.stream([ChatMessage("system", "Be brief."), ChatMessage("user", "What's the weather")], [])

    async def texts():
        async for delta in deltas:
            assert delta.tool_call is None
            yield delta.text

    sentences = [s async for s in split_sentences(texts())]
    await provider.close()
    assert sentences == ["You said: What's the weather.", "It is sunny today!", "Anything else?"]
    path, headers, body = openai_server.requests[-1]
    request = json.loads(body)
    assert path == "/v1/chat/completions" and headers["Authorization"] == f"Bearer {API_KEY}"
    assert request["stream"] is True and request["temperature"] == 0.2 and request["max_tokens"] == 50
    assert "tools" not in request  # an empty tools list is left out: some services reject []


async def test_llm_assembles_streamed_tool_calls(openai_server: FakeServer) -> None:
    deltas = await collect(llm(openai_server, "tools"), [ChatMessage("user", "volume 30, light red")], [VOLUME, LIGHT])
    assert deltas == [
        LlmDelta(tool_call=ToolCall("call_a", "self.audio_speaker.set_volume", {"volume": 30})),
        LlmDelta(tool_call=ToolCall("call_b", "self.light.set_rgb", {"r": 255})),
    ]
    request = json.loads(openai_server.requests[-1][2])
    # MCP names have dots, which the OpenAI API refuses in function names; the mapping is undone on return.
    names = [tool["function"]["name"] for tool in request["tools"]]
    assert names == ["self_audio_speaker_set_volume", "self_light_set_rgb"]
    assert request["tools"][0] == {
        "type": "function",
        "function": {"name": "self_audio_speaker_set_volume", "description": VOLUME.description,
                     "parameters": VOLUME.parameters},
    }  # fmt: skip


async def test_llm_sends_tool_results_in_openai_form(openai_server: FakeServer) -> None:
    call = ToolCall("call_a", "self.audio_speaker.set_volume", {"volume": 30})
    messages = [
        ChatMessage("user", "volume 30"),
        ChatMessage("assistant", "", tool_calls=[call]),
        ChatMessage("tool", "true", tool_call_id="call_a"),
    ]
    deltas = await collect(llm(openai_server), messages, [VOLUME])
    assert "".join(d.text for d in deltas).startswith("You said: true.")
    wire = json.loads(openai_server.requests[-1][2])["messages"]
    assert wire[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_a", "type": "function",
                        "function": {"name": "self_audio_speaker_set_volume", "arguments": '{"volume": 30}'}}],
    }  # fmt: skip
    assert wire[2] == {"role": "tool", "content": "true", "tool_call_id": "call_a"}


async def test_llm_http_error_is_a_one_line_provider_error(openai_server: FakeServer) -> None:
    with pytest.raises(ProviderError) as caught:
        await collect(llm(openai_server, "broken"), [ChatMessage("user", "hi")], [])
    message = str(caught.value)
    assert "HTTP 500" in message and "The model is overloaded. Try again later." in message and "\n" not in message


async def test_llm_wrong_api_key(openai_server: FakeServer) -> None:
    provider = OpenAiLlm(base_url=openai_server.base_url, model="chat", api_key="wrong")
    with pytest.raises(ProviderError, match=r"HTTP 401.*Incorrect API key"):
        await collect(provider, [ChatMessage("user", "hi")], [])


async def test_llm_malformed_sse_is_a_provider_error(openai_server: FakeServer) -> None:
    received: list[LlmDelta] = []
    provider = llm(openai_server, "malformed")
    with pytest.raises(ProviderError, match="invalid JSON"):
        async for delta in provider.stream([ChatMessage("user", "hi")], []):
            received.append(delta)
    await provider.close()
    assert received == [LlmDelta(text="Hi")]  # what came before the bad event was delivered
    with pytest.raises(ProviderError, match="not server-sent events"):
        await collect(llm(openai_server, "not-sse"), [ChatMessage("user", "hi")], [])


@pytest.mark.parametrize("model", ["slow", "stall"])
async def test_llm_timeout_is_a_provider_error(openai_server: FakeServer, model: str) -> None:
    started = time.perf_counter()
    with pytest.raises(ProviderError, match="timed out"):
        await collect(llm(openai_server, model, timeout_s=0.3), [ChatMessage("user", "hi")], [])
    assert time.perf_counter() - started < STALL_S


async def test_llm_connection_refused_is_a_provider_error(closed_port_url: str) -> None:
    provider = OpenAiLlm(base_url=closed_port_url, model="chat", timeout_s=2)
    with pytest.raises(ProviderError, match="cannot connect to the LLM service"):
        await collect(provider, [ChatMessage("user", "hi")], [])


# ---- ASR -------------------------------------------------------------------------------------------------


async def test_asr_uploads_a_wav_and_returns_the_text(openai_server: FakeServer) -> None:
    asr = OpenAiAsr(base_url=openai_server.base_url, api_key=API_KEY, model="whisper-1", language="en")
    try:
        pcm = np.zeros(24000, dtype=np.int16)
        assert await asr.transcribe(pcm, 16000) == "heard 1.50 s at 16000 Hz in en"
        assert await asr.transcribe(pcm, 24000, language="zh") == "heard 1.00 s at 24000 Hz in zh"
        assert await asr.transcribe(np.zeros(0, dtype=np.int16)) == ""
    finally:
        await asr.close()
    path, headers, _ = openai_server.requests[-1]
    assert path == "/v1/audio/transcriptions" and headers["Content-Type"].startswith("multipart/form-data")


@pytest.mark.parametrize(
    ("model", "timeout_s", "expected"),
    [("broken", 5.0, "HTTP 503: upstream unavailable"), ("slow", 0.3, "timed out")],
)
async def test_asr_failures_are_provider_errors(
    openai_server: FakeServer, model: str, timeout_s: float, expected: str
) -> None:
    asr = OpenAiAsr(base_url=openai_server.base_url, api_key=API_KEY, model=model, timeout_s=timeout_s)
    try:
        with pytest.raises(ProviderError, match=expected):
            await asr.transcribe(np.zeros(1600, dtype=np.int16))
    finally:
        await asr.close()


async def test_asr_connection_refused(closed_port_url: str) -> None:
    asr = OpenAiAsr(base_url=closed_port_url, timeout_s=2)
    with pytest.raises(ProviderError, match="cannot connect to the ASR service"):
        await asr.transcribe(np.zeros(1600, dtype=np.int16))
    await asr.close()


# ---- TTS -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("response_format", "sample_rate"), [("pcm", 24000), ("pcm", 16000), ("wav", 24000)])
async def test_tts_returns_pcm_at_the_wanted_rate(
    openai_server: FakeServer, response_format: str, sample_rate: int
) -> None:
    tts = OpenAiTts(
        base_url=openai_server.base_url, api_key=API_KEY, response_format=response_format, sample_rate=sample_rate
    )
    try:
        pcm = await tts.synthesize("Hello there.")
    finally:
        await tts.close()
    assert pcm.dtype == np.int16 and abs(pcm.size - sample_rate // 2) <= 1
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    assert np.argmax(spectrum) * sample_rate / pcm.size == pytest.approx(440, abs=3)
    request = json.loads(openai_server.requests[-1][2])
    assert request == {"model": "tts-1", "input": "Hello there.", "voice": "alloy", "response_format": response_format}


async def test_tts_failures_are_provider_errors(openai_server: FakeServer, closed_port_url: str) -> None:
    broken = OpenAiTts(base_url=openai_server.base_url, api_key=API_KEY, model="broken")
    with pytest.raises(ProviderError, match=r"HTTP 500: \(empty body\)"):
        await broken.synthesize("hi")
    await broken.close()
    refused = OpenAiTts(base_url=closed_port_url, timeout_s=2)
    with pytest.raises(ProviderError, match="cannot connect to the TTS service"):
        await refused.synthesize("hi")
    await refused.close()


# ---- built from reference-shaped config ------------------------------------------------------------------


async def test_providers_built_from_config_talk_to_the_service(openai_server: FakeServer) -> None:
    common = {"type": "openai", "url": openai_server.base_url, "api_key": API_KEY, "timeout_s": 5}
    asr = build_asr("cloud", {"cloud": {**common, "model_name": "whisper-1"}})
    model = build_llm("qwen", {"local": {"type": "local"}, "qwen": {**common, "model_name": "chat"}})
    tts = build_tts("cloud", {"cloud": {**common, "voice": "nova", "sample_rate": 16000}})
    try:
        assert (await asr.transcribe(np.zeros(8000, dtype=np.int16))).startswith("heard 0.50 s")
        text = "".join([d.text async for d in model.stream([ChatMessage("user", "ping")], [])])
        assert text.startswith("You said: ping.")
        assert (await tts.synthesize("Hi.")).size == 8000
    finally:
        for provider in (asr, model, tts):
            await provider.close()
