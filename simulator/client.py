"""A simulated xiaozhi device on the WebSocket protocol: handshake, hello, the firmware's state machine,
uplink audio, downlink playback and the device side of MCP (protocol.md §1).

State machine (``Application`` in the firmware)::

    idle ──connect──▶ connecting ──server hello──▶ idle (channel open)
    idle/listening ──tts start──▶ speaking ──tts stop──▶ listening (auto/realtime: listen start re-sent)
                                                     └─▶ idle      (manual mode, or no listen mode yet)
    listen_start ▶ listening        listen_stop (manual) ▶ idle        channel closed ▶ idle

Audio frames are played only while speaking (the firmware discards the rest); leaving speaking flushes the
queue.  Everything the device observes is published as typed events (:mod:`simulator.events`) and each
reply is summarised in a :class:`~simulator.turns.TurnReport`.  Bad input from the server is reported as a
:class:`~simulator.events.ProtocolError` event and otherwise ignored: a device never crashes on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from server.audio.decoder import InvalidOpusPacket, OpusDecoder
from server.protocol import framing
from server.protocol.messages import LISTEN_MODES, ListenMode
from server.protocol.server_messages import (
    QUIET_TYPES,
    ServerAlert,
    ServerGoodbye,
    ServerHello,
    ServerLlm,
    ServerMcp,
    ServerMessage,
    ServerMessageError,
    ServerOther,
    ServerStt,
    ServerSystem,
    ServerTts,
    parse_server_message,
)
from server.text import one_line
from simulator.errors import ChannelUnavailable, SimulatorError
from simulator.events import (
    Alert,
    AudioPlayed,
    DeviceStateName,
    Disconnected,
    Emotion,
    Event,
    EventHub,
    EventStream,
    ProtocolError,
    Sentence,
    ServerCommand,
    StateChanged,
    SttText,
    ToolCalled,
    TtsState,
    TurnFinished,
)
from simulator.identity import DeviceIdentity
from simulator.mcp_tools import DeviceMcpServer, DeviceState
from simulator.ota import DEFAULT_APP_VERSION, DEFAULT_BOARD, OtaResult, check_ota
from simulator.playback import MAX_QUEUED_FRAMES, PlaybackQueue, PlaybackStats
from simulator.recorder import ConversationRecorder
from simulator.turns import TurnBuilder, TurnEnd, TurnReport

__all__ = ["ConnectionStats", "DeviceClient"]

HELLO_TIMEOUT_S = 10.0  # firmware: wait 10 s for the server hello, then "server timeout"
CHANNEL_TIMEOUT_S = 120.0  # firmware IsTimeout(): nothing received for 120 s = channel dead
UPLINK_AUDIO_PARAMS = {"format": "opus", "sample_rate": 16000, "channels": 1, "frame_duration": 60}
MAX_MESSAGE_BYTES = 2**20
EARLY_MESSAGES = 32  # messages kept from before the server hello, handled once it came


@dataclass
class ConnectionStats:
    packets_sent: int = 0
    packets_muted: int = 0  # send_opus while the firmware's mic would be off (not listening)
    frames_ignored: int = 0  # downlink audio outside speaking: the firmware discards it
    bad_frames: int = 0
    bad_packets: int = 0
    protocol_errors: int = 0


def _authorization(token: str) -> str:
    # Firmware: a token without a space gets "Bearer " in front; one with a space is sent as configured.
    return token if " " in token else f"Bearer {token}"


class DeviceClient:
    def __init__(
        self,
        url: str,
        identity: DeviceIdentity,
        *,
        token: str | None = None,
        protocol_version: int = 1,
        mcp: DeviceMcpServer | None = None,
        recorder: ConversationRecorder | None = None,
        decode_audio: bool = True,
        jitter_frames: int = 3,
        max_queued_frames: int = MAX_QUEUED_FRAMES,
        hello_timeout_s: float = HELLO_TIMEOUT_S,
        open_timeout_s: float = 10.0,
        channel_timeout_s: float = CHANNEL_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if protocol_version not in framing.SUPPORTED_VERSIONS or isinstance(protocol_version, bool):
            raise SimulatorError(f"protocol version must be 1, 2 or 3, got {protocol_version!r}")
        self.url = url
        self.identity = identity
        self.token = token or None
        self.version = protocol_version
        self.mcp = mcp if mcp is not None else DeviceMcpServer()
        self.recorder = recorder
        self.decode_audio = decode_audio
        self.hello_timeout_s = hello_timeout_s
        self.open_timeout_s = open_timeout_s
        self.channel_timeout_s = channel_timeout_s
        self.clock = clock
        self.ota: OtaResult | None = None
        self.state: DeviceStateName = "idle"
        self.session_id = ""
        self.listen_mode: ListenMode | None = None
        self.downlink_sample_rate = 24000
        self.downlink_frame_ms = 60
        self.playback = PlaybackQueue(60, jitter_frames, max_queued_frames, clock)
        self.turns: list[TurnReport] = []
        self.stats = ConnectionStats()
        self.close_code: int | None = None
        self.close_reason = ""
        self._hub = EventHub()
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._player: asyncio.Task[None] | None = None
        self._player_wake = asyncio.Event()
        self._turn_pulse = asyncio.Event()
        self._turn: TurnBuilder = TurnBuilder()
        self._next_stt: str | None = None
        self._input_index = 0  # the turn answering the latest user input is turns[_input_index]
        self._decoder: OpusDecoder | None = None
        self._connected_at = 0.0

    @classmethod
    async def from_ota(
        cls,
        ota_url: str,
        identity: DeviceIdentity,
        *,
        app_version: str = DEFAULT_APP_VERSION,
        board: str = DEFAULT_BOARD,
        **options: Any,
    ) -> DeviceClient:
        """Ask the OTA endpoint where to connect (like the firmware at boot); the client is not connected yet."""
        result = await check_ota(ota_url, identity, app_version=app_version, board=board)
        # like the firmware: the answer's websocket.version, unless the caller chose one
        options["protocol_version"] = options.get("protocol_version") or result.protocol_version or 1
        if "mcp" not in options:
            options["mcp"] = DeviceMcpServer(name=board, version=app_version)
        client = cls(result.websocket_url, identity, token=result.token or None, **options)
        client.ota = result
        return client

    # ---- observation --------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def device(self) -> DeviceState:
        """What the MCP tools control (volume, light…)."""
        return self.mcp.state

    def events(self, maxsize: int = 1000) -> EventStream:
        """Subscribe to everything from now on; close the stream (or ``async with``) when done."""
        return self._hub.subscribe(maxsize)

    def _publish(self, event: Event) -> None:
        self._hub.publish(event)

    def _protocol_error(self, message: str) -> None:
        self.stats.protocol_errors += 1
        self._publish(ProtocolError(message))

    def _set_state(self, new: DeviceStateName) -> None:
        if new != self.state:
            old, self.state = self.state, new
            self._publish(StateChanged(old, new))

    # ---- connecting ---------------------------------------------------------------------------------

    async def __aenter__(self) -> DeviceClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the audio channel (handshake + hello) and stay idle; no-op when already open."""
        if self.connected:
            return
        await self._open_channel()
        self._set_state("idle")

    async def _ensure_channel(self) -> None:
        # The firmware opens the channel on demand (wake word, button), not at boot.  The state stays
        # "connecting" until the caller moves on (e.g. to listening), so no idle blips in between.
        if not self.connected:
            await self._open_channel()

    def _headers(self) -> dict[str, str]:
        headers = {
            "Protocol-Version": str(self.version),
            "Device-Id": self.identity.device_id,
            "Client-Id": self.identity.client_id,
        }
        if self.token:
            headers = {"Authorization": _authorization(self.token), **headers}
        return headers

    async def _open_channel(self) -> None:
        self._set_state("connecting")
        try:
            ws = await self._handshake()
            try:
                hello, early = await self._await_hello(ws)
            except BaseException:
                await ws.close()
                raise
        except BaseException:
            self._set_state("idle")
            raise
        self._ws = ws
        self._connected_at = self.clock()
        self.close_code, self.close_reason = None, ""
        self.session_id = hello.session_id
        self.downlink_sample_rate = hello.sample_rate
        self.downlink_frame_ms = hello.frame_duration
        self.playback.set_frame_ms(hello.frame_duration)
        self._decoder = OpusDecoder(hello.sample_rate) if self.decode_audio else None
        if hello.problem:
            self._protocol_error(hello.problem)
        if self.version != 1 and hello.version != self.version:
            # The public reference servers frame no audio (raw opus, version 1) and say so, or nothing, in their
            # hello: framing ours as version 2 or 3 would make every packet noise to them, and theirs to us.
            said = "does not say which" if hello.version is None else f"says version {hello.version}"
            self._protocol_error(
                f"asked for binary protocol version {self.version}, but the server's hello {said}: "
                "sending and reading raw opus (version 1) instead"
            )
            self.version = 1
        for message in early:
            try:
                await self._dispatch(message)
            except ConnectionClosed:
                break  # the reader sees the close
            except Exception as exc:  # as in the reader: a simulator bug must not take the device down
                self._protocol_error(f"internal error handling a server message: {exc!r}")
        self._reader = asyncio.create_task(self._read_loop(ws), name=f"sim-reader:{self.identity.device_id}")
        self._player = asyncio.create_task(self._play_loop(), name=f"sim-player:{self.identity.device_id}")

    async def _handshake(self) -> ClientConnection:
        url = self.url
        try:
            return await connect(
                url,
                additional_headers=self._headers(),
                open_timeout=self.open_timeout_s,
                max_size=MAX_MESSAGE_BYTES,
                compression=None,  # the firmware's esp_websocket_client has no permessage-deflate
                ping_interval=None,  # nor does it ping; it only answers the server's pings
                user_agent_header=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            body = one_line(exc.response.body.decode("utf-8", "replace")) if exc.response.body else ""
            phrase = exc.response.reason_phrase
            error = ChannelUnavailable if status >= 500 else SimulatorError
            raise error(
                f"server refused the connection: HTTP {status} {phrase}" + (f": {body}" if body else "")
            ) from None
        except InvalidURI as exc:
            raise SimulatorError(f"bad WebSocket URL {url!r}: {exc}") from None
        except TimeoutError:
            raise ChannelUnavailable(f"connecting to {url} timed out after {self.open_timeout_s:g} s") from None
        except OSError as exc:
            raise ChannelUnavailable(f"cannot connect to {url}: {one_line(exc.strerror or str(exc))}") from None
        except InvalidHandshake as exc:
            raise SimulatorError(f"WebSocket handshake with {url} failed: {one_line(str(exc))}") from None

    async def _await_hello(self, ws: ClientConnection) -> tuple[ServerHello, list[ServerMessage]]:
        """The server hello, and the messages that came before it (a server may send MCP ``initialize`` first;
        the firmware handles every non-hello message whenever it comes)."""
        early: list[ServerMessage] = []
        said = ""  # the last text that was not a message (a server's plain-text refusal)
        await ws.send(
            json.dumps(
                {"type": "hello", "version": self.version, "features": {"mcp": True}, "transport": "websocket",
                 "audio_params": UPLINK_AUDIO_PARAMS}
            )
        )  # fmt: skip
        try:
            async with asyncio.timeout(self.hello_timeout_s):
                while True:
                    data = await ws.recv()
                    if not isinstance(data, str):
                        continue  # no framing agreed yet; the firmware has nothing to play either
                    try:
                        message = parse_server_message(data)
                    except ServerMessageError as exc:
                        self._protocol_error(f"before hello: {exc}")
                        said = one_line(data)
                        continue
                    if not isinstance(message, ServerHello):
                        if len(early) < EARLY_MESSAGES:
                            early.append(message)
                        else:
                            self._protocol_error(f"before hello: ignored a {type(message).__name__} message")
                        continue
                    if message.transport != "websocket":
                        # The firmware ignores such a hello and times out.
                        self._protocol_error(f"server hello has transport {message.transport!r}, not 'websocket'")
                        continue
                    return message, early
        except TimeoutError:
            raise ChannelUnavailable(f"server hello missing or late: none within {self.hello_timeout_s:g} s") from None
        except ConnectionClosed as exc:
            code, reason = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")
            if said:  # e.g. the Python reference server's "认证失败" (authentication failed): not worth retrying
                message = f"server refused the device before its hello: {said!r} (close code {code})"
                raise SimulatorError(message) from None
            raise ChannelUnavailable(f"server closed the connection before its hello (code {code}: {reason})") from None

    async def close(self) -> None:
        """Close the audio channel (the firmware's CloseAudioChannel) and return to idle."""
        ws, reader = self._ws, self._reader
        if ws is None:
            return
        await ws.close()
        if reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    # ---- user actions -------------------------------------------------------------------------------

    def _require_ws(self) -> ClientConnection:
        if self._ws is None:
            detail = f" (closed: code {self.close_code} {self.close_reason})".rstrip() if self.close_code else ""
            raise SimulatorError(f"not connected{detail}")
        return self._ws

    async def send_json(self, message: dict[str, Any]) -> None:
        """Send a control message with the session id, as the firmware does for every JSON message."""
        ws = self._require_ws()
        try:
            await ws.send(json.dumps({"session_id": self.session_id, **message}, ensure_ascii=False))
        except ConnectionClosed as exc:
            raise SimulatorError(f"connection closed while sending: {exc}") from None

    def mark_end_of_speech(self, at: float | None = None) -> None:
        """The user just finished (last speech packet sent, listen stop, or text sent): latency starts here,
        and :meth:`wait_for_turn` waits for the reply to this input."""
        self.playback.mark_end_of_speech(self.clock() if at is None else at)
        self._input_index = len(self.turns)

    async def listen_start(self, mode: ListenMode = "auto") -> None:
        """Start streaming the mic (button press / after wake word). Aborts a reply still being spoken."""
        if mode not in LISTEN_MODES:
            raise SimulatorError(f"listen mode must be one of {', '.join(LISTEN_MODES)}, got {mode!r}")
        await self._ensure_channel()
        if self.state == "speaking":
            await self.abort()
            self._leave_speaking("listen", "listening")
        self.listen_mode = mode
        await self.send_json({"type": "listen", "state": "start", "mode": mode})
        self._set_state("listening")

    async def listen_stop(self) -> None:
        """Push-to-talk release: end of the utterance. Only meaningful while listening (firmware)."""
        if self.state != "listening":
            return
        self.mark_end_of_speech()
        await self.send_json({"type": "listen", "state": "stop"})
        self._set_state("idle")

    async def send_text(self, text: str) -> None:
        """Type instead of speak: ``listen detect`` with the text, which servers treat as the user's words."""
        await self._ensure_channel()
        if self.state == "connecting":
            self._set_state("idle")  # before sending: the reply's tts start may follow at once
        self.mark_end_of_speech()
        await self.send_json({"type": "listen", "state": "detect", "text": text})

    async def say(self, text: str, timeout: float = 60.0) -> TurnReport:
        """:meth:`send_text` and wait for the reply to be played."""
        await self.send_text(text)
        return await self.wait_for_turn(timeout)

    async def wake_word(self, text: str = "你好小智", mode: ListenMode = "auto") -> None:
        """The local wake word fired: (abort a reply being spoken,) report it, then start listening."""
        await self._ensure_channel()
        if self.state == "speaking":
            await self.abort("wake_word_detected")
            self._leave_speaking("listen", "listening")
        # The wake word was just spoken, and servers may answer it (a greeting, or as chat text).
        self.mark_end_of_speech()
        await self.send_json({"type": "listen", "state": "detect", "text": text})
        await self.listen_start(mode)

    async def abort(self, reason: str | None = None) -> None:
        """Ask the server to stop talking; it answers with ``tts stop`` (measured in the turn report)."""
        message: dict[str, Any] = {"type": "abort"}
        if reason is not None:
            message["reason"] = reason
        await self.send_json(message)
        if self.state == "speaking" and self._turn.aborted_at is None:
            self._turn.aborted_at = self.clock()

    async def interrupt(self) -> None:
        """Barge-in: while a reply is being spoken, ``abort`` it and stop playing at once (the firmware
        flushes its queue on leaving speaking); the reply's report says it was interrupted."""
        if self.state != "speaking":
            return
        await self.abort()
        self._leave_speaking("listen", "idle")

    async def send_opus(self, packet: bytes) -> bool:
        """One 60 ms mic packet. Returns False (not sent) when the firmware's mic would be off: outside
        listening, except while speaking in realtime mode."""
        ws = self._require_ws()
        mic_on = self.state == "listening" or (self.state == "speaking" and self.listen_mode == "realtime")
        if not mic_on:
            self.stats.packets_muted += 1
            return False
        if self.version == 1:
            data = bytes(packet)
        else:
            timestamp = int((self.clock() - self._connected_at) * 1000) & 0xFFFF_FFFF
            data = framing.encode_frame(self.version, framing.BinaryFrame("audio", bytes(packet), timestamp))
        try:
            await ws.send(data)
        except ConnectionClosed as exc:
            raise SimulatorError(f"connection closed while sending audio: {exc}") from None
        self.stats.packets_sent += 1
        if self.recorder is not None:
            self.recorder.uplink(packet, self.clock())
        return True

    async def wait_for_turn(self, timeout: float = 60.0) -> TurnReport:
        """The report of the reply to the latest user input, waiting until it has finished playing."""
        index = self._input_index
        try:
            async with asyncio.timeout(timeout):
                while len(self.turns) <= index:
                    if not self.connected:
                        if self.close_code is None:
                            raise SimulatorError("not connected: no reply can come")
                        raise SimulatorError(
                            f"connection closed before the reply finished (code {self.close_code}: {self.close_reason})"
                        )
                    await self._turn_pulse.wait()
        except TimeoutError:
            raise SimulatorError(f"no reply finished within {timeout:g} s") from None
        return self.turns[index]

    # ---- receiving ----------------------------------------------------------------------------------

    async def _read_loop(self, ws: ClientConnection) -> None:
        try:
            while True:
                try:
                    async with asyncio.timeout(self.channel_timeout_s):
                        data = await ws.recv()
                except TimeoutError:
                    self._protocol_error(f"nothing received for {self.channel_timeout_s:g} s: closing the channel")
                    await ws.close()
                    break
                try:
                    if isinstance(data, str):
                        await self._on_text(data)
                    else:
                        await self._on_binary(data)
                except ConnectionClosed:
                    raise
                except Exception as exc:  # a simulator bug must not take the device down either
                    self._protocol_error(f"internal error handling a server message: {exc!r}")
        except ConnectionClosed:
            pass
        finally:
            self._on_closed(ws)

    def _on_closed(self, ws: ClientConnection) -> None:
        if self._ws is not ws:
            return
        self.close_code, self.close_reason = ws.close_code, ws.close_reason or ""
        if self.state == "speaking":
            self._leave_speaking("disconnect", "idle")
        self._ws = None
        if self._player is not None:
            self._player.cancel()
            self._player = None
        self._set_state("idle")
        self._publish(Disconnected(self.close_code, self.close_reason))
        self._pulse_turns()

    async def _on_text(self, text: str | bytes) -> None:
        try:
            message = parse_server_message(text)
        except ServerMessageError as exc:
            self._protocol_error(str(exc))
            return
        await self._dispatch(message)

    async def _dispatch(self, message: ServerMessage) -> None:
        match message:
            case ServerStt(text=text):
                if self.state == "speaking" and self._turn.started_at is not None:
                    self._next_stt = text  # the server took new input while still replying
                else:
                    self._turn.stt = text
                self._publish(SttText(text))
            case ServerLlm(emotion=emotion, text=text):
                if emotion:  # a server may send llm text without one
                    if self._turn.emotion is None:
                        self._turn.emotion = emotion
                    self._publish(Emotion(emotion, text))
            case ServerTts(state="start"):
                self._publish(TtsState("start"))
                if self.state == "speaking":
                    # The server began a new reply without stopping the last: the firmware just keeps
                    # playing, but the report splits here.
                    self._finish_turn("superseded", flush=False)
                    self._begin_turn()
                elif self.state in ("idle", "listening"):
                    self._begin_turn()
                    self._set_state("speaking")
            case ServerTts(state="sentence_start", text=text):
                assert text is not None
                self._turn.sentences.append(text)
                self._publish(Sentence(text, "start"))
            case ServerTts(state="sentence_end", text=text):
                self._publish(Sentence(text or "", "end"))
            case ServerTts(state="stop"):
                await self._on_tts_stop()
            case ServerMcp(payload=payload):
                await self._on_mcp(payload)
            case ServerAlert(status=status, message=text, emotion=emotion):
                self._publish(Alert(status, text, emotion))
            case ServerSystem(command=command):
                self._publish(ServerCommand(command))
                if command == "reboot":
                    await self._require_ws().close(1000, "reboot")  # a device drops its channel to reboot
            case ServerGoodbye():
                self._publish(ServerCommand("goodbye"))
                await self._require_ws().close(1000, "goodbye")
            case ServerHello(problem=problem):
                if problem:
                    self._protocol_error(problem)
                # otherwise nothing: a repeated hello changes nothing once the channel is open
            case ServerOther(type=type_name):
                if type_name not in QUIET_TYPES:
                    self._protocol_error(f"ignored unknown message type {type_name!r}")

    async def _on_tts_stop(self) -> None:
        self._publish(TtsState("stop"))
        if self.state != "speaking":
            return  # e.g. the answer to an abort we already left speaking for
        mode = self.listen_mode
        if mode in ("auto", "realtime"):
            # The firmware's Listening state re-sends listen start: the conversation continues hands-free.
            self._leave_speaking("tts_stop", "listening")
            with contextlib.suppress(SimulatorError):  # closed meanwhile: _on_closed tidies up
                await self.send_json({"type": "listen", "state": "start", "mode": mode})
        else:
            self._leave_speaking("tts_stop", "idle")

    async def _on_mcp(self, payload: dict[str, Any]) -> None:
        calls_before = len(self.mcp.calls)
        reply = self.mcp.handle(payload)
        for record in self.mcp.calls[calls_before:]:
            self._turn.tool_calls.append(record)
            self._publish(ToolCalled(record.name, record.arguments, record.result_text, record.is_error))
        if reply is not None:
            with contextlib.suppress(SimulatorError):
                await self.send_json({"type": "mcp", "payload": reply})

    async def _on_binary(self, data: bytes) -> None:
        try:
            frame = framing.decode_frame(self.version, data)
        except framing.FrameError as exc:
            self.stats.bad_frames += 1
            self._protocol_error(f"bad binary frame: {exc}")
            return
        if frame.kind == "json":
            await self._on_text(frame.payload)
            return
        if self.state != "speaking":
            self.stats.frames_ignored += 1
            return
        self.playback.push(frame.payload)
        self._player_wake.set()

    # ---- turns and playback -------------------------------------------------------------------------

    def _begin_turn(self) -> None:
        self.playback.reset()
        if self._decoder is not None:
            self._decoder.reset()  # the firmware resets its decoder on tts start
        if self.recorder is not None:
            self.recorder.downlink_reset()
        if self._next_stt is not None:
            self._turn.stt, self._next_stt = self._next_stt, None
        self._turn.started_at = self.clock()

    def _leave_speaking(self, ended_by: TurnEnd, next_state: DeviceStateName) -> None:
        """Any way out of speaking: the firmware flushes what has not played (the clipped tail)."""
        self._finish_turn(ended_by, flush=True)
        self._set_state(next_state)

    def _finish_turn(self, ended_by: TurnEnd, *, flush: bool) -> None:
        if flush:
            self.playback.flush()
        self._emit_played(self.playback.poll())
        report = self._turn.finish(self.playback.stats, self.clock(), ended_by)
        self._turn = TurnBuilder()
        if not flush:
            self.playback.stats = PlaybackStats()  # the queue plays on; the next reply counts afresh
        self.turns.append(report)
        self._publish(TurnFinished(report))
        self._pulse_turns()

    def _pulse_turns(self) -> None:
        # set() resolves every current waiter; clearing right away re-arms the event for the next pulse.
        self._turn_pulse.set()
        self._turn_pulse.clear()

    async def _play_loop(self) -> None:
        """The speaker: takes packets as their play time comes, on the monotonic clock."""
        while True:
            if self.playback.idle:
                self._player_wake.clear()
                await self._player_wake.wait()
                continue
            self._emit_played(self.playback.poll())
            await asyncio.sleep(self.playback.frame_s / 3)

    def _emit_played(self, packets: list[bytes]) -> None:
        for packet in packets:
            pcm = None
            if self._decoder is not None:
                try:
                    pcm = self._decoder.decode(packet)
                except InvalidOpusPacket as exc:
                    self.stats.bad_packets += 1
                    self._protocol_error(f"undecodable downlink packet: {exc}")
            if self.recorder is not None:
                self.recorder.downlink(packet, self.clock())
            self._publish(AudioPlayed(packet, pcm, self.downlink_sample_rate))
