"""One simulated device run by a person or a script: connecting (OTA or WebSocket, activation), the event
pump (subtitles, speaker, reports), one-shot inputs (typed text, audio files, the wake word), the live mode
(microphone + keyboard) and reconnecting with backoff when the channel drops.

Like the firmware, the device reconnects by itself when the server or network drops the channel, but not
after the server said ``goodbye`` (it goes idle until the user talks again) and not on a first connection
that fails: a person starting the simulator wants to see that error at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from server.protocol.messages import ListenMode
from simulator.client import DeviceClient
from simulator.errors import ChannelUnavailable, SimulatorError
from simulator.events import AudioPlayed, Disconnected, Event, EventStream, ServerCommand, TtsState, TurnFinished
from simulator.identity import DeviceIdentity
from simulator.inputs import AudioSource, UplinkEncoder, speak
from simulator.mcp_tools import DeviceMcpServer
from simulator.microphone import Microphone, SpeechEndDetector
from simulator.ota import DEFAULT_APP_VERSION, DEFAULT_BOARD, ActivationRefused, activate, check_ota
from simulator.recorder import ConversationRecorder
from simulator.speaker import Speaker
from simulator.terminal import Terminal
from simulator.turns import TurnReport

__all__ = ["ConnectOptions", "DeviceSession", "Keyboard", "create_client", "is_ota_url"]

DEFAULT_WAKE_WORD = "你好小智"
WAKE_GRACE_S = 3.0  # after the wake word, a greeting that has not started by then is not coming
ACTIVATION_POLL_S = 3.0  # firmware: a pending activation (HTTP 202) is polled again after 3 s


def is_ota_url(server: str) -> bool:
    return server.lower().startswith(("http://", "https://"))


@dataclass
class ConnectOptions:
    server: str  # OTA URL (http[s]://) or WebSocket URL (ws[s]://)
    identity: DeviceIdentity
    token: str | None = None  # for a WebSocket URL; an OTA answer brings its own
    protocol_version: int | None = None  # None: the OTA answer's websocket.version, else 1
    board: str = DEFAULT_BOARD
    app_version: str = DEFAULT_APP_VERSION
    hello_timeout_s: float = 10.0
    open_timeout_s: float = 10.0
    jitter_frames: int = 3
    decode_audio: bool = True
    recorder: ConversationRecorder | None = None
    activation_timeout_s: float = 300.0
    mcp: DeviceMcpServer | None = None


async def create_client(options: ConnectOptions, terminal: Terminal | None = None) -> DeviceClient:
    """A client for ``options.server``: an OTA URL is asked first (firmware headers and body), an activation
    code is shown and polled until the server binds the device.  Not connected yet."""
    server = options.server
    common = {
        "protocol_version": options.protocol_version,
        "recorder": options.recorder,
        "decode_audio": options.decode_audio,
        "jitter_frames": options.jitter_frames,
        "hello_timeout_s": options.hello_timeout_s,
        "open_timeout_s": options.open_timeout_s,
        "mcp": options.mcp or DeviceMcpServer(name=options.board, version=options.app_version),
    }
    if is_ota_url(server):
        client = await DeviceClient.from_ota(
            server, options.identity, app_version=options.app_version, board=options.board, **common
        )
        if options.token:
            client.token = options.token
        assert client.ota is not None
        if terminal is not None:
            terminal.note(f"OTA: connect to {client.url}" + (" with a token" if client.token else ""))
        if client.ota.activation is not None:
            await _activate(server, options, client, terminal)
        return client
    if server.lower().startswith(("ws://", "wss://")):
        common["protocol_version"] = options.protocol_version or 1
        return DeviceClient(server, options.identity, token=options.token, **common)
    raise SimulatorError(
        f"server must be an OTA URL (http://HOST:8003/xiaozhi/ota/) or a WebSocket URL "
        f"(ws://HOST:8000/xiaozhi/v1/), got {server!r}"
    )


async def greeting_started(events: EventStream, within_s: float) -> bool:
    """Whether a reply starts within ``within_s`` (after a wake word: some servers greet, some stay silent)."""
    try:
        await events.next(TtsState, where=lambda e: e.state == "start", timeout=within_s)
    except SimulatorError:
        return False
    return True


async def _activate(server: str, options: ConnectOptions, client: DeviceClient, terminal: Terminal | None) -> None:
    """Poll ``/activate`` until the server binds the device, like the firmware. A server whose activation
    endpoint answers anything but 200/202 is asked the OTA question again instead, until its answer no longer
    carries an activation code (the firmware's outer loop)."""
    assert client.ota is not None and client.ota.activation is not None
    code = client.ota.activation
    if terminal is not None:
        terminal.say(f"activation code: {code.code}" + (f" — {code.message}" if code.message else ""))
    deadline = time.monotonic() + options.activation_timeout_s
    versions = {"app_version": options.app_version, "board": options.board}
    by_ota = False
    while True:
        if by_ota:
            answer = await check_ota(server, options.identity, **versions)
            bound = answer.activation is None
            if bound and answer.token and not options.token:
                client.token = answer.token
        else:
            try:
                bound = await activate(server, options.identity, **versions) == "activated"
            except ActivationRefused as exc:
                if terminal is not None:
                    terminal.note(f"{exc}; asking the OTA endpoint again until the code is bound")
                by_ota = True
                continue
        if bound:
            if terminal is not None:
                terminal.note("device activated")
            return
        if time.monotonic() + ACTIVATION_POLL_S > deadline:
            raise SimulatorError(
                f"device not activated within {options.activation_timeout_s:g} s: enter code {code.code} "
                "on the server's console, then run the simulator again"
            )
        await asyncio.sleep(ACTIVATION_POLL_S)


class Keyboard:
    """Lines typed on stdin, read by a daemon thread (it never keeps the process alive); None at EOF."""

    def __init__(self, stream: object = None) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._stream = stream if stream is not None else sys.stdin
        self.interactive = bool(getattr(self._stream, "isatty", lambda: False)())
        threading.Thread(target=self._read, name="sim-keyboard", daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self._stream:  # type: ignore[attr-defined]
                self._loop.call_soon_threadsafe(self.queue.put_nowait, line.rstrip("\r\n"))
        except (OSError, ValueError):
            pass
        with contextlib.suppress(RuntimeError):  # the loop may be gone at exit
            self._loop.call_soon_threadsafe(self.queue.put_nowait, None)


HELP = [
    "keys: Enter = talk (auto: start listening / interrupt; manual: push to talk, Enter again to stop)",
    "      any text + Enter = type instead of speaking; /wake [word]  /abort  /status  /quit",
]


@dataclass
class DeviceSession:
    client: DeviceClient
    terminal: Terminal
    speaker: Speaker | None = None
    mode: ListenMode = "auto"
    reply_timeout_s: float = 60.0
    reconnect_attempts: int = 8
    max_backoff_s: float = 30.0
    reports: list[TurnReport] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    goodbye: bool = False
    on_turn: Callable[[TurnReport], None] | None = None
    _pump: asyncio.Task[None] | None = field(default=None, init=False)
    _disconnected: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _closing: bool = field(default=False, init=False)
    _inputs_sent: int = field(default=0, init=False)  # replies expected so far (live mode)

    async def start(self) -> None:
        """Connect (errors propagate: no retry for a first connection) and start showing events."""
        stream = self.client.events(maxsize=5000)
        self._pump = asyncio.create_task(self._pump_events(stream), name="sim-events")
        await self.client.connect()

    async def _pump_events(self, stream: object) -> None:
        async for event in stream:  # type: ignore[attr-defined]
            self._handle(event)

    def _handle(self, event: Event) -> None:
        self.terminal.show(event)
        match event:
            case AudioPlayed(pcm=pcm, sample_rate=rate) if self.speaker is not None and pcm is not None:
                try:
                    self.speaker.play(pcm, rate)
                except SimulatorError as exc:
                    self.terminal.note(f"warning: {exc}; the speaker is off from now on")
                    self.speaker.close()
                    self.speaker = None
            case TurnFinished(report=report):
                self.reports.append(report)
                if self.on_turn is not None:
                    self.on_turn(report)
            case ServerCommand(command="goodbye"):
                self.goodbye = True
            case Disconnected():
                self._disconnected.set()

    # ---- connection ---------------------------------------------------------------------------------

    async def ensure_connected(self) -> None:
        """Reopen a dropped channel with exponential backoff (1 s, 2 s, 4 s … up to ``max_backoff_s``, with
        ±20 % jitter so many devices do not come back in lockstep).  A refusal (HTTP 4xx) is final."""
        if self.client.connected:
            return
        delay = 1.0
        for attempt in range(1, self.reconnect_attempts + 1):
            try:
                await self.client.connect()
            except ChannelUnavailable as exc:
                if attempt == self.reconnect_attempts:
                    raise SimulatorError(f"gave up reconnecting after {attempt} attempts: {exc}") from None
                wait = delay * random.uniform(0.8, 1.2)
                self.terminal.note(f"reconnecting in {wait:.1f} s ({exc})")
                await asyncio.sleep(wait)
                delay = min(delay * 2, self.max_backoff_s)
                continue
            self._disconnected.clear()
            self.goodbye = False
            self.terminal.note(f"connected: session {self.client.session_id or '(none)'}")
            return

    async def close(self) -> None:
        self._closing = True
        await self.client.close()
        await asyncio.sleep(0)  # let the pump show the last events
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        if self.speaker is not None:
            await self.speaker.drain()
            self.speaker.close()

    # ---- one-shot inputs ----------------------------------------------------------------------------

    async def wait_reply(self, what: str) -> TurnReport | None:
        try:
            return await self.client.wait_for_turn(self.reply_timeout_s)
        except SimulatorError as exc:
            self.failures.append(f"{what}: {exc}")
            self.terminal.note(f"error: {what}: {exc}")
            return None

    async def say_text(self, text: str) -> TurnReport | None:
        """Typed text (``listen detect``), interrupting a reply being spoken, and wait for the answer."""
        await self.ensure_connected()
        await self.client.interrupt()
        self.terminal.say(f"> {text}")
        await self.client.send_text(text)
        return await self.wait_reply(f"reply to {text!r}")

    async def speak(self, source: AudioSource, label: str, mode: ListenMode | None = None) -> TurnReport | None:
        """An audio file spoken into the mic in real time, and wait for the answer."""
        await self.ensure_connected()
        self.terminal.say(f"> (speaking {label}, {source.duration_s:.1f} s)")
        await speak(self.client, source, mode or self.mode, realtime=True)
        return await self.wait_reply(f"reply to {label}")

    async def wake(self, word: str = DEFAULT_WAKE_WORD, *, reply_grace_s: float | None = None) -> None:
        """The wake word, then listening.  With ``reply_grace_s``, also wait for a greeting if the server
        starts one within that time (servers with greetings off just acknowledge)."""
        await self.ensure_connected()
        self.terminal.say(f"> (wake word {word})")
        events = self.client.events()
        try:
            await self.client.wake_word(word, self.mode)
            if reply_grace_s is None:
                return
            if await greeting_started(events, reply_grace_s):
                await self.wait_reply("greeting after the wake word")
        finally:
            events.close()

    # ---- live: microphone + keyboard ------------------------------------------------------------------

    async def live(
        self,
        microphone: Microphone | None,
        keyboard: Keyboard | None,
        stop: asyncio.Event,
        *,
        listen_at_start: bool = True,
    ) -> None:
        """Until ``stop`` is set: stream the mic as the device's mic (muted when the firmware's would be),
        obey the keyboard, and reopen the channel when it drops."""
        tasks = [asyncio.create_task(self._supervise(stop, microphone is not None), name="sim-supervisor")]
        try:
            if microphone is not None:
                tasks.append(asyncio.create_task(self._stream_microphone(microphone), name="sim-microphone"))
                if listen_at_start and self.mode != "manual" and self.client.state != "listening":
                    await self.ensure_connected()
                    await self.client.listen_start(self.mode)
                    self.terminal.note(f"listening ({self.mode} mode): talk to the device")
                elif self.mode == "manual":
                    self.terminal.note("manual mode: press Enter to talk, Enter again to stop")
            if keyboard is not None:
                tasks.append(asyncio.create_task(self._read_keyboard(keyboard, stop, microphone is not None)))
                if keyboard.interactive:
                    for line in HELP:
                        self.terminal.note(line)
            stopper = asyncio.create_task(stop.wait(), name="sim-stop")
            tasks.append(stopper)
            pending = set(tasks)
            while not stopper.done():
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:  # a task that ends normally (the keyboard at EOF) just leaves the others on
                    if not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _supervise(self, stop: asyncio.Event, microphone: bool) -> None:
        while not stop.is_set():
            await self._disconnected.wait()
            if stop.is_set() or self._closing:
                return
            if self.goodbye:
                self.terminal.note("the server said goodbye: channel closed; press Enter to talk again")
                self._disconnected.clear()
                continue
            await self.ensure_connected()
            if microphone and self.mode != "manual":
                await self.client.listen_start(self.mode)

    async def _stream_microphone(self, microphone: Microphone) -> None:
        encoder = UplinkEncoder()
        speech = SpeechEndDetector()
        client = self.client
        async for frame in microphone.frames():
            state = client.state
            mic_on = state == "listening" or (state == "speaking" and client.listen_mode == "realtime")
            if not mic_on or not client.connected:
                speech.reset()
                continue
            now = time.monotonic()
            try:
                await client.send_opus(encoder.encode(frame))
            except SimulatorError:
                continue  # the channel just closed: the supervisor reconnects
            if client.listen_mode != "manual":
                ended = speech.feed(frame, now)
                if ended is not None:
                    client.mark_end_of_speech(ended)  # latency is measured from the user's last word

    async def _read_keyboard(self, keyboard: Keyboard, stop: asyncio.Event, microphone: bool) -> None:
        while True:
            line = await keyboard.queue.get()
            if line is None:  # EOF: without a mic there is nothing more to come
                if not microphone:
                    await self._finish_pending()
                    stop.set()
                return
            try:
                await self._command(line.strip(), stop, microphone)
                if not keyboard.interactive and self._inputs_sent > len(self.client.turns):
                    await self.wait_reply(f"reply to {line.strip()!r}")  # piped input reads like a script
            except ChannelUnavailable:
                raise
            except SimulatorError as exc:
                self.terminal.note(f"error: {exc}")

    async def _finish_pending(self) -> None:
        client = self.client
        if client.connected and (client.state == "speaking" or len(client.turns) < self._inputs_sent):
            await self.wait_reply("reply")

    async def _command(self, line: str, stop: asyncio.Event, microphone: bool) -> None:
        client = self.client
        if line in ("/quit", "/exit", "/bye"):
            stop.set()
        elif line == "/help":
            for text in HELP:
                self.terminal.note(text)
        elif line == "/abort":
            await client.abort()
        elif line == "/status":
            self.terminal.say(f"  device: {client.state}, {client.device.status()}")
        elif line.startswith("/wake"):
            # some servers greet, some only listen: a greeting is played if it starts, never waited out
            await self.wake(line[5:].strip() or DEFAULT_WAKE_WORD, reply_grace_s=WAKE_GRACE_S)
        elif line.startswith("/"):
            self.terminal.note(f"unknown command {line.split()[0]!r}; /help lists them")
        elif line == "":
            await self.ensure_connected()
            if self.mode == "manual" and client.state == "listening":
                await client.listen_stop()
                self._inputs_sent = len(client.turns) + 1
                self.terminal.note("(stopped talking)")
            else:
                await client.listen_start(self.mode)  # aborts a reply being spoken: barge-in
                self.terminal.note("(talk now" + (", Enter to stop)" if self.mode == "manual" else ")"))
        else:
            await self.ensure_connected()
            await client.interrupt()
            await client.send_text(line)
            self._inputs_sent = len(client.turns) + 1
