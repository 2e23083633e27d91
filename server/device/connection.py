"""One device connection = one conversation session (the hello ``session_id``).

The receive loop never waits for storage, providers or the device's MCP answers: audio goes into the
VAD batcher and the utterance buffer, a finished utterance starts a *turn* task (ASR → LLM → TTS), and
storage happens through the event bus. A bad frame gets an ``alert`` and the loop goes on; only a
protocol violation that makes the stream meaningless (binary before hello, no hello) closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from websockets.exceptions import ConnectionClosed

from server.audio.collector import AudioCollector
from server.audio.opus_packets import InvalidOpusPacket, packet_samples
from server.audio.pacer import AudioPacer
from server.device.mcp_client import DeviceMcpClient
from server.events.types import SessionEnd, SessionStart
from server.pipeline.uplink import SEGMENT_PAD_S, StreamReport
from server.pipeline.vad import VadConfig, VadEvent
from server.protocol import framing, messages
from server.protocol.headers import ConnectionInfo

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

    from server.device.context import ServerContext

log = logging.getLogger(__name__)

UPLINK_RATE = 16000  # every uplink is decoded at 16 kHz: what VAD and ASR want (opus decodes at any rate)
PREROLL_S = 0.3  # audio kept before the VAD's speech start
MAX_UTTERANCE_S = 60.0
# A decoder started in the middle of a stream glitches on its first packet (measured: Whisper then heard "Below
# now" for "Hello now"); decoding the two packets before the segment first, and dropping them, avoids it.
WARMUP_PACKETS = 2
MAX_BUFFERED_PACKETS = 2 * int(MAX_UTTERANCE_S * 1000 / 20)  # two utterances' worth of the smallest (20 ms) frames
LEVEL_EVERY_S = 0.2

DeviceState = Literal["connecting", "idle", "listening", "speaking", "closed"]

# Close codes (RFC 6455 private range for ours).
CLOSE_NO_HELLO = 4000
CLOSE_PROTOCOL = 1002
CLOSE_IDLE = 4001


@dataclass(slots=True)
class UplinkChunk:
    offset: int  # sample offset (16 kHz) of the packet's first sample since listening (re)started
    packet: bytes
    samples: int  # what the packet decodes to at 16 kHz (from its TOC byte)


@dataclass
class Utterance:
    """What a turn starts from: typed text, or the speech segment (packets: stored, and decoded for ASR)."""

    text: str | None = None
    packets: list[bytes] = field(default_factory=list)
    warmup: list[bytes] = field(default_factory=list)  # packets just before: they prime the decoder, then dropped
    pcm: np.ndarray | None = None
    source: Literal["voice", "text", "wake_word"] = "voice"


class DeviceConnection:
    def __init__(self, ws: ServerConnection, info: ConnectionInfo, ctx: ServerContext) -> None:
        self.ws = ws
        self.info = info
        self.ctx = ctx
        self.device_id = info.device_id
        self.version = info.protocol_version
        self.session_id = uuid.uuid4().hex
        self.state: DeviceState = "connecting"
        self.listen_mode: str = "auto"
        self.listening = False
        settings = ctx.settings
        self.frame_ms = settings.frame_duration_ms
        self.downlink_rate = settings.downlink_sample_rate
        self.uplink_rate = UPLINK_RATE
        self.uplink_frame_ms = 60
        self.mcp = DeviceMcpClient(self._send_mcp, timeout_s=settings.tool_call_timeout_s)
        self.pacer = AudioPacer(self.frame_ms, settings.prebuffer_frames)
        self.collector = AudioCollector(user_sample_rate=self.uplink_rate, tts_sample_rate=self.downlink_rate)
        self._vad = ctx.vad.open(VadConfig(min_silence_ms=settings.vad_min_silence_ms))
        self._samples = 0
        self._vad_reported = 0  # VAD position whose events have been delivered to on_vad
        self._chunks: deque[UplinkChunk] = deque()
        self._in_speech = False
        self._speech_start = 0
        self._turn: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_level = 0.0
        self._last_rx = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_close: asyncio.Task[None] | None = None
        self.history: list[Any] = []  # the LLM conversation of this session (pipeline ChatMessage objects)
        self.context_ready: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.system_prompt = settings.system_prompt
        self.stats = {"frames_in": 0, "bad_frames": 0, "bad_packets": 0, "frames_out": 0}
        self.connected_at = time.monotonic()

    # ---- sending --------------------------------------------------------------------------------

    async def send_json(self, message: dict[str, Any]) -> None:
        if "session_id" not in message:
            message["session_id"] = self.session_id
        await self.ws.send(json.dumps(message, ensure_ascii=False))

    async def send_audio(self, packet: bytes) -> None:
        if self.version == 1:
            await self.ws.send(packet)
        else:
            frame = framing.BinaryFrame("audio", packet, int((time.monotonic() - self.connected_at) * 1000))
            await self.ws.send(framing.encode_frame(self.version, frame))
        self.stats["frames_out"] += 1
        if self.ctx.live.wants_audio(self.device_id):
            self.ctx.live.emit("downlink", self.device_id, self.session_id, packet=packet,
                               sample_rate=self.downlink_rate)  # fmt: skip

    async def _send_mcp(self, payload: dict[str, Any]) -> None:
        await self.send_json(messages.mcp(self.session_id, payload))

    async def alert(self, message: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.send_json(messages.error(self.session_id, message))
        self.ctx.live.emit("error", self.device_id, self.session_id, message=message)

    def set_state(self, state: DeviceState) -> None:
        if state != self.state:
            self.state = state
            self.ctx.live.emit("state", self.device_id, self.session_id, state=state)

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"{name}:{self.device_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            hello = await self._receive_hello()
            if hello is None:
                return
            await self._open_session(hello)
            await self._receive_loop()
        except ConnectionClosed:
            pass
        finally:
            await self._close_session()

    async def _receive_hello(self) -> messages.Hello | None:
        try:
            async with asyncio.timeout(self.ctx.settings.hello_timeout_s):
                first = await self.ws.recv()
        except TimeoutError:
            await self.ws.close(CLOSE_NO_HELLO, "no hello within the timeout")
            return None
        if not isinstance(first, str):
            await self.ws.close(CLOSE_PROTOCOL, "the first message must be the JSON hello")
            return None
        try:
            hello = messages.parse_device_message(first)
        except messages.MessageError as exc:
            await self.ws.close(CLOSE_PROTOCOL, f"bad hello: {exc.reason}"[:120])
            return None
        if not isinstance(hello, messages.Hello):
            await self.ws.close(CLOSE_PROTOCOL, "the first message must be the hello")
            return None
        return hello

    def _hello(self) -> dict[str, Any]:
        return messages.server_hello(self.session_id, self.downlink_rate, self.frame_ms, version=self.version)

    async def _open_session(self, hello: messages.Hello) -> None:
        if hello.version in framing.SUPPORTED_VERSIONS and hello.version != self.version:
            log.info("device %s: hello version %d overrides header %d", self.device_id, hello.version, self.version)
            self.version = hello.version
        self.uplink_frame_ms = hello.audio_params.frame_duration
        await self.send_json(self._hello())
        self.ctx.connections[self.session_id] = self
        self.ctx.by_vad_stream[self._vad.id] = self
        metadata = {
            "client_id": self.info.client_id,
            "protocol_version": self.version,
            "features": hello.features,
            "uplink": {"sample_rate": hello.audio_params.sample_rate, "frame_ms": hello.audio_params.frame_duration},
            "server": self.ctx.server_name,
        }
        self.ctx.publish(SessionStart(self.session_id, self.device_id, metadata=metadata))
        log.info("device %s connected: session %s, protocol v%d", self.device_id, self.session_id, self.version)
        self.ctx.live.emit("connect", self.device_id, self.session_id, client_id=self.info.client_id)
        self.set_state("idle")
        self.spawn(self._load_context(), "context")
        if hello.supports_mcp:
            self.spawn(self._init_mcp(), "mcp")

    async def _load_context(self) -> None:
        """The device's previous conversation warms the LLM context, so a reconnect keeps it."""
        try:
            context = await self.ctx.load_context(self.device_id, self.session_id)
            prompt = await self.ctx.load_system_prompt(self.device_id)
            if prompt:
                self.system_prompt = prompt
        except Exception as exc:  # storage down: talk without the previous context rather than not at all
            log.warning("device %s: previous context not loaded: %s", self.device_id, exc)
            context = []
        if not self.context_ready.done():
            self.context_ready.set_result(context)

    async def _init_mcp(self) -> None:
        try:
            tools = await self.mcp.initialize()
            self.ctx.live.emit("tool_result", self.device_id, self.session_id, tools=[t.name for t in tools])
        except Exception as exc:
            log.warning("device %s: MCP initialisation failed: %s", self.device_id, exc)

    async def _close_session(self) -> None:
        if self.state == "closed":
            return
        opened = self.state != "connecting"
        self.set_state("closed")
        if self._turn is not None:
            self._turn.cancel()
            with contextlib.suppress(BaseException):
                await self._turn
        for task in list(self._tasks):
            task.cancel()
        self.mcp.close()
        self.ctx.vad.close(self._vad)
        self.ctx.by_vad_stream.pop(self._vad.id, None)
        self.ctx.connections.pop(self.session_id, None)
        if opened:
            self.ctx.publish(SessionEnd(self.session_id, self.device_id))
            self.ctx.live.emit("disconnect", self.device_id, self.session_id, **self.stats)
            log.info("device %s disconnected: session %s %s", self.device_id, self.session_id, self.stats)

    # ---- receiving ------------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        # One idle timer per connection, re-armed only when it fires, instead of a timeout per message: the
        # loop receives thousands of frames a second from hundreds of devices.
        loop = asyncio.get_running_loop()
        idle = self.ctx.settings.idle_timeout_s
        self._last_rx = loop.time()
        self._idle_timer = loop.call_later(idle, self._check_idle, idle)
        try:
            while True:
                message = await self.ws.recv()
                self._last_rx = loop.time()
                if isinstance(message, str):
                    await self._on_text(message)
                else:
                    await self._on_binary(message)
        finally:
            if self._idle_timer is not None:
                self._idle_timer.cancel()

    def _check_idle(self, idle: float) -> None:
        loop = asyncio.get_running_loop()
        quiet = loop.time() - self._last_rx
        if quiet >= idle and self.state != "speaking":  # while speaking the device listens; it sends nothing
            self._idle_timer = None
            self._idle_close = loop.create_task(self.ws.close(CLOSE_IDLE, "idle"))  # the receive loop then ends
            return
        self._idle_timer = loop.call_later(idle - quiet if quiet < idle else idle, self._check_idle, idle)

    async def _on_text(self, text: str | bytes) -> None:
        try:
            message = messages.parse_device_message(text)
        except messages.MessageError as exc:
            log.info("device %s sent a bad message: %s", self.device_id, exc.reason)
            await self.alert(f"bad message: {exc.reason}")
            return
        match message:
            case messages.Listen(state="start", mode=mode):
                mode = mode or "auto"
                # In realtime mode the mic never closed: the firmware's `listen start` after our `tts stop` (or a
                # barge-in's) continues the same stream, and resetting it would cut off the words being said.
                continuing = self.listening and self.listen_mode == "realtime" and mode == "realtime"
                self.listen_mode = mode
                self._start_listening(fresh=not continuing)
            case messages.Listen(state="stop"):
                self._finish_manual_utterance()
            case messages.Listen(state="detect", text=text_input):
                if text_input and text_input.strip():
                    await self._on_detect(text_input.strip())
            case messages.Abort():
                await self.abort()
            case messages.Mcp(payload=payload):
                await self.mcp.handle(payload)
            case messages.Ping():
                await self.send_json(messages.pong(self.session_id, int(time.time() * 1000)))
            case messages.Goodbye():
                await self.ws.close(1000, "goodbye")
            case messages.Hello():
                await self.send_json(self._hello())
            case _:
                pass  # legacy iot messages: accepted, nothing to do

    async def _on_detect(self, text: str) -> None:
        """A wake word, or typed text (web test pages send chat text this way)."""
        is_wake_word = text.casefold().strip(" ,.!?，。！？") in self.ctx.wakeup_words
        if is_wake_word and not self.ctx.settings.enable_greeting:
            # Like the reference with greetings off: acknowledge, and let the device listen.
            await self.send_json(messages.stt(self.session_id, text))
            await self.send_json(messages.tts_stop(self.session_id))
            return
        self.start_turn(Utterance(text=text, source="wake_word" if is_wake_word else "text"))

    async def _on_binary(self, data: bytes) -> None:
        self.stats["frames_in"] += 1
        try:
            frame = framing.decode_frame(self.version, data)
        except framing.FrameError as exc:
            self.stats["bad_frames"] += 1
            if self.stats["bad_frames"] in (1, 10, 100) or self.stats["bad_frames"] % 1000 == 0:
                await self.alert(f"bad audio frame: {exc}")
            return
        if frame.kind == "json":
            await self._on_text(frame.payload)
            return
        self.on_audio(frame.payload)

    def on_audio(self, packet: bytes) -> None:
        """Keep the packet and queue it for the uplink worker (decoding and VAD happen there)."""
        if not self.listening or (self.state == "speaking" and self.listen_mode != "realtime"):
            return  # the firmware mutes the mic while speaking, except in realtime mode
        try:
            samples = packet_samples(packet, UPLINK_RATE)
        except InvalidOpusPacket:
            self.stats["bad_packets"] += 1
            return
        self._chunks.append(UplinkChunk(self._samples, packet, samples))
        if len(self._chunks) > MAX_BUFFERED_PACKETS:  # a hard bound, whatever the VAD's progress
            self._chunks.popleft()
        self._samples += samples
        self._vad.push(packet, samples)  # in every mode, so VAD offsets and buffer offsets stay one scale
        if self.ctx.live.wants_audio(self.device_id):
            self.ctx.live.emit("uplink", self.device_id, self.session_id, packet=packet, sample_rate=UPLINK_RATE)

    def _trim_chunks(self) -> None:
        if self._in_speech or self.listen_mode == "manual":
            keep_from = self._samples - int(MAX_UTTERANCE_S * UPLINK_RATE)
        else:
            # Keep the pre-roll before what the VAD has judged *and reported*; audio it has not looked at
            # yet (it lags by a tick, more under load or with a device sending faster than real time) stays.
            keep_from = min(self._samples, self._vad_reported) - int(PREROLL_S * UPLINK_RATE)
        while self._chunks and self._chunks[0].offset + self._chunks[0].samples < keep_from:
            self._chunks.popleft()

    def _start_listening(self, fresh: bool = True) -> None:
        self.listening = True
        if fresh:
            # A fresh utterance scale: the VAD forgets a segment a push-to-talk `listen stop` cut short, and the
            # buffer offsets restart with it.
            self._vad.reset()
            self._restart_scale()
        if self.state != "speaking":
            self.set_state("listening")

    def _restart_scale(self) -> None:
        self._samples = 0
        self._vad_reported = 0
        self._chunks.clear()
        self._in_speech = False

    def on_uplink_report(self, report: StreamReport) -> None:
        """What the uplink worker found in this connection's latest packets."""
        if report.restarted:  # the worker was replaced: its offsets (and so ours) start over
            self._restart_scale()
            return
        self.stats["bad_packets"] += report.bad_packets
        if report.level is not None:
            now = time.monotonic()
            if now - self._last_level >= LEVEL_EVERY_S:
                self._last_level = now
                self.ctx.live.emit("level", self.device_id, self.session_id, rms=round(report.level, 1),
                                   speech=self._in_speech)  # fmt: skip
        if report.events:
            self.on_vad(report.events, report.segments)
        if not self._vad.reset_pending:
            self._vad_reported = self._vad.evaluated_samples
        self._trim_chunks()  # once per tick, not per frame: what may go only changes with the VAD's progress

    def on_vad(self, events: list[VadEvent], segments: list[np.ndarray] | None = None) -> None:
        """VAD events in order; ``segments``: the decoded PCM of each ``speech_end``'s segment (from the worker)."""
        if self.listen_mode == "manual":
            return  # push-to-talk: the device's `listen stop` ends the utterance, not silence
        pcm = iter(segments or ())
        for event in events:
            log.debug("device %s: %s", self.device_id, event)
            if event.kind == "speech_start":
                self._in_speech = True
                self._speech_start = event.start
                self.ctx.live.emit("state", self.device_id, self.session_id, state="listening", speech=True)
                if self.state == "speaking" and self.listen_mode == "realtime":
                    self.spawn(self.abort(), "barge-in")
            elif event.kind == "speech_end":
                segment = next(pcm, None)
                if not self._in_speech:
                    continue
                self._in_speech = False
                assert event.end is not None
                utterance = self._take_segment(event.start, event.end)
                utterance.pcm = segment  # None: ASR decodes the packets
                if self.listen_mode != "realtime":
                    self.listening = False  # firmware re-sends `listen start` after our `tts stop`
                self.start_turn(utterance)

    def _take_segment(self, start: int, end: int) -> Utterance:
        """The speech only (VAD-trimmed, with a little padding) — not the silence around it."""
        lo = start - int(SEGMENT_PAD_S * UPLINK_RATE)
        hi = end + int(SEGMENT_PAD_S * UPLINK_RATE)
        before = [c for c in self._chunks if c.offset + c.samples <= lo][-WARMUP_PACKETS:]
        chunks = [c for c in self._chunks if c.offset + c.samples > lo and c.offset < hi]
        while self._chunks and self._chunks[0].offset < hi:  # later audio may already hold the next utterance
            self._chunks.popleft()
        return Utterance(packets=[c.packet for c in chunks], warmup=[c.packet for c in before])

    def _finish_manual_utterance(self) -> None:
        self.listening = False
        chunks = list(self._chunks)
        self._chunks.clear()
        if not chunks:
            self.set_state("idle")
            return
        self.start_turn(Utterance(packets=[c.packet for c in chunks]))

    # ---- turns ----------------------------------------------------------------------------------

    def start_turn(self, utterance: Utterance) -> None:
        from server.device.turn import run_turn

        if self._turn is not None and not self._turn.done():
            self._turn.cancel()  # a new utterance replaces the reply still being spoken
        self._turn = self.spawn(run_turn(self, utterance), "turn")

    def summary(self) -> dict[str, Any]:
        """What an operator sees of this connection (the console's live view)."""
        return {
            "device_id": self.device_id,
            "session_id": self.session_id,
            "client_id": self.info.client_id,
            "protocol_version": self.version,
            "state": self.state,
            "listen_mode": self.listen_mode,
            "codec": "opus",
            "uplink_frame_ms": self.uplink_frame_ms,
            "downlink_rate": self.downlink_rate,
            "connected_s": round(time.monotonic() - self.connected_at, 1),
            **self.stats,
        }

    async def operator_command(self, command: str, message: str = "") -> None:
        """``alert`` (shown on the screen), ``reboot`` (system command), ``goodbye`` (close the audio channel)."""
        if command == "alert":
            await self.send_json(messages.alert(self.session_id, "info", message or "message from the operator",
                                                "neutral"))  # fmt: skip
        elif command == "reboot":
            await self.send_json(messages.system_reboot(self.session_id))
        elif command == "goodbye":
            await self.send_json(messages.goodbye(self.session_id))
            await self.ws.close(1000, "goodbye")
        else:
            raise ValueError(f"unknown device command {command!r} (alert, reboot or goodbye)")
        self.ctx.live.emit("command", self.device_id, self.session_id, command=command, message=message)

    async def abort(self) -> None:
        """Silence within one frame: stop the turn, forget the device's queue, say so."""
        turn = self._turn
        if turn is not None and not turn.done():
            turn.cancel()
            with contextlib.suppress(BaseException):
                await turn
        self.pacer.reset()
        with contextlib.suppress(ConnectionClosed):
            await self.send_json(messages.tts_stop(self.session_id))
        self.set_state("listening" if self.listening else "idle")
