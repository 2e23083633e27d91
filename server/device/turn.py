"""One dialogue turn: user text (typed, or ASR of the speech segment) → LLM (with the device's MCP tools)
→ TTS sentence by sentence, paced to real time → ``tts stop`` only after the last frame has played.

Storage: the user message, the assistant's tool calls, the tool results and the reply are published in
order, with the user's speech segment and the reply's audio as Ogg Opus files linked to their messages.
If the turn is cut short (abort, barge-in, disconnect), what was already said is still stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed

from server.device.mcp_client import McpCallError
from server.events.types import AddMessage, SaveAudio
from server.pipeline.llm import ChatMessage, ToolCall, ToolSpec
from server.pipeline.registry import ProviderError
from server.pipeline.sentences import SentenceSplitter
from server.pipeline.speech import AHEAD, FIRST
from server.pipeline.uplink import decode_packets
from server.protocol import messages
from server.storage.models import NewMessage

if TYPE_CHECKING:
    from server.device.connection import DeviceConnection, Utterance

log = logging.getLogger(__name__)
MAX_TOOL_ROUNDS = 4
STOP_MARGIN_S = 0.15  # the device decodes and plays a little behind what it received
ASR_TIMEOUT_S = 30.0
CONTEXT_WAIT_S = 2.0


class Reply:
    """What the assistant has said so far in this turn (stored even when the turn is cut short)."""

    def __init__(self) -> None:
        self.message_id = uuid.uuid4().hex
        self.spoken: list[str] = []
        self.packets: list[bytes] = []
        self.first_audio_at: float | None = None


async def run_turn(conn: DeviceConnection, utterance: Utterance) -> None:
    ctx = conn.ctx
    reply = Reply()
    started = time.monotonic()
    try:
        text = await _user_text(conn, utterance)
        log.debug("device %s: heard %r", conn.device_id, text)
        if not text:
            _resume_listening(conn, utterance)  # nothing was understood: the device still listens, so do we
            return
        user_id = uuid.uuid4().hex
        await conn.send_json(messages.stt(conn.session_id, text))
        ctx.live.emit("stt", conn.device_id, conn.session_id, text=text, source=utterance.source)
        _store_message(conn, "user", text, message_id=user_id, metadata={"input": utterance.source})
        if utterance.packets:
            ctx.publish(
                SaveAudio(conn.session_id, conn.device_id, "user", tuple(utterance.packets), conn.uplink_rate,
                          message_id=user_id, transcription=text)
            )  # fmt: skip
        conn.history.append(ChatMessage("user", text))
        await conn.send_json(messages.tts_start(conn.session_id))
        conn.set_state("speaking")
        conn.pacer.reset()
        await _converse(conn, reply)
        await asyncio.sleep(conn.pacer.remaining() + STOP_MARGIN_S)
        await conn.send_json(messages.tts_stop(conn.session_id))
        conn.set_state("listening" if conn.listen_mode != "manual" else "idle")
        if reply.first_audio_at is not None:
            ctx.live.emit("tts", conn.device_id, conn.session_id, state="stop",
                          first_audio_ms=round((reply.first_audio_at - started) * 1000, 1))  # fmt: skip
    except ConnectionClosed:
        pass
    except ProviderError as exc:
        log.warning("device %s: turn failed: %s", conn.device_id, exc)
        await conn.alert(f"sorry, something went wrong: {exc}")
        with contextlib.suppress(ConnectionClosed):
            await conn.send_json(messages.tts_stop(conn.session_id))
        _resume_listening(conn, utterance)
    finally:
        _store_reply(conn, reply)


def _resume_listening(conn: DeviceConnection, utterance: Utterance) -> None:
    if utterance.source == "voice":  # a typed turn does not change whether the device's mic is open
        conn.listening = conn.listen_mode != "manual"
    conn.set_state("listening" if conn.listening else "idle")


async def _user_text(conn: DeviceConnection, utterance: Utterance) -> str:
    if utterance.text is not None:
        return utterance.text
    pcm = utterance.pcm
    if pcm is None and utterance.packets:
        pcm = await asyncio.to_thread(decode_packets, utterance.packets, conn.uplink_rate, utterance.warmup)
    if pcm is None or not len(pcm):
        return ""
    async with asyncio.timeout(ASR_TIMEOUT_S):
        text = await conn.ctx.providers.asr.transcribe(pcm, conn.uplink_rate)
    return text.strip()


async def _converse(conn: DeviceConnection, reply: Reply) -> None:
    ctx = conn.ctx
    context: list[ChatMessage] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CONTEXT_WAIT_S):
            context = await asyncio.shield(conn.context_ready)
    tools = [ToolSpec(t.name, t.description, t.input_schema) for t in conn.mcp.tools]
    splitter = SentenceSplitter()
    emotion_sent = False
    async with Speaker(conn, reply) as speaker:
        for _ in range(MAX_TOOL_ROUNDS):
            prompt = [ChatMessage("system", conn.system_prompt), *context, *conn.history]
            said = ""
            calls: list[ToolCall] = []
            async for delta in ctx.providers.llm.stream(prompt, tools):
                if delta.tool_call is not None:
                    calls.append(delta.tool_call)
                    continue
                if not delta.text:
                    continue
                if not emotion_sent:
                    await conn.send_json(messages.llm_emotion(conn.session_id, "happy"))
                    emotion_sent = True
                said += delta.text
                for sentence in splitter.feed(delta.text):
                    await speaker.say(sentence)
            for sentence in splitter.flush():
                await speaker.say(sentence)
            if not calls:
                if said:
                    conn.history.append(ChatMessage("assistant", said))
                return
            await speaker.drain()  # what was said before the tool call is heard before its effect
            await _run_tools(conn, said, calls)


async def _run_tools(conn: DeviceConnection, said: str, calls: list[ToolCall]) -> None:
    ctx = conn.ctx
    wire_calls = [
        {
            "id": c.id,
            "type": "function",
            "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)},
        }
        for c in calls
    ]
    _store_message(conn, "assistant", said, tool_calls=wire_calls)
    conn.history.append(ChatMessage("assistant", said, tool_calls=calls))
    for call in calls:
        ctx.live.emit("tool_call", conn.device_id, conn.session_id, name=call.name, arguments=call.arguments)
        try:
            result = await conn.mcp.call(call.name, call.arguments)
            output = result.text if not result.is_error else f"error: {result.text}"
        except McpCallError as exc:
            output = f"error: {exc}"
        ctx.live.emit("tool_result", conn.device_id, conn.session_id, name=call.name, output=output)
        _store_message(conn, "tool", output, tool_call_id=call.id)
        conn.history.append(ChatMessage("tool", output, tool_call_id=call.id))


class Speaker:
    """Speaks a turn's sentences in order while the next one is synthesized: one playing, at most one ahead.

    ``say`` returns as soon as the sentence is queued (it waits only while one sentence plays and another is
    ready), so the LLM stream goes on meanwhile. A turn's first sentence has the synthesis pool's priority. The
    player's failure (provider error, device gone) is raised by the next ``say``, ``drain`` or at exit.
    """

    def __init__(self, conn: DeviceConnection, reply: Reply) -> None:
        self.conn = conn
        self.reply = reply
        self._slots = asyncio.Semaphore(2)
        self._queue: asyncio.Queue[tuple[str, asyncio.Task[list[bytes]]] | None] = asyncio.Queue()
        self._player: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[list[bytes]]] = set()
        self._count = 0

    async def __aenter__(self) -> Speaker:
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                await self.drain()
            except BaseException:  # cancelled (abort, barge-in, disconnect) while the last sentences play
                await self._cancel()
                raise
        else:
            await self._cancel()

    async def say(self, sentence: str) -> None:
        self._raise_if_failed()
        if self._player is None:
            self._player = asyncio.create_task(self._play(), name=f"speaker:{self.conn.device_id}")
        await self._slots.acquire()
        self._raise_if_failed()
        priority = FIRST if self._count == 0 else AHEAD
        self._count += 1
        synth = asyncio.create_task(self.conn.ctx.speech.render(sentence, priority=priority))
        self._pending.add(synth)
        synth.add_done_callback(self._pending.discard)
        self._queue.put_nowait((sentence, synth))

    async def drain(self) -> None:
        """Wait until everything said so far has been sent; raises what the player failed with."""
        player = self._player
        if player is None:
            return
        if not player.done():
            self._queue.put_nowait(None)
            await asyncio.shield(player)
        self._player = None  # the next `say` starts a new one
        player.result()

    def _raise_if_failed(self) -> None:
        if self._player is not None and self._player.done():
            self._player.result()  # raises the player's error (it only ends early by failing)

    async def _cancel(self) -> None:
        tasks = [t for t in (*self._pending, self._player) if t is not None]
        while not self._queue.empty():  # synthesized but never played: retrieve their results or errors
            item = self._queue.get_nowait()
            if item is not None:
                tasks.append(item[1])
        for task in tasks:
            task.cancel()
            task.add_done_callback(_retrieve)  # even if this wait is itself cancelled (abort, then disconnect)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _play(self) -> None:
        conn = self.conn
        try:
            while (item := await self._queue.get()) is not None:
                sentence, synth = item
                await conn.send_json(messages.tts_sentence_start(conn.session_id, sentence))
                conn.ctx.live.emit("tts", conn.device_id, conn.session_id, state="sentence_start", text=sentence)
                packets = await synth
                self.reply.spoken.append(sentence)
                for packet in packets:
                    await conn.pacer.wait_turn()
                    await conn.send_audio(packet)
                    conn.pacer.mark_sent()
                    if self.reply.first_audio_at is None:
                        self.reply.first_audio_at = time.monotonic()
                    self.reply.packets.append(packet)
                await conn.send_json(messages.tts_sentence_end(conn.session_id, sentence))
                self._slots.release()
        except BaseException:
            self._slots.release()  # wake a `say` waiting for a slot, so it sees the failure
            raise


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _store_message(conn: DeviceConnection, role: str, content: str, **fields: Any) -> None:
    conn.ctx.publish(AddMessage(NewMessage(conn.session_id, conn.device_id, role, content, **fields)))  # type: ignore[arg-type]


def _store_reply(conn: DeviceConnection, reply: Reply) -> None:
    if not reply.spoken:
        return
    text = "".join(reply.spoken) if _cjk(reply.spoken) else " ".join(reply.spoken)
    complete = conn.history and conn.history[-1].role == "assistant" and conn.history[-1].content
    _store_message(
        conn, "assistant", text, message_id=reply.message_id, metadata=None if complete else {"interrupted": True}
    )
    if reply.packets:
        conn.ctx.publish(
            SaveAudio(conn.session_id, conn.device_id, "tts", tuple(reply.packets), conn.downlink_rate,
                      message_id=reply.message_id, transcription=text)
        )  # fmt: skip


def _cjk(parts: list[str]) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for part in parts for ch in part)
