"""A simulated device started from the console (no Qt): the simulator's own DeviceSession against the
console's device server, fed by a microphone (picked from the sound devices) or an audio file, in auto or
push-to-talk mode, with its subtitles (what the device's screen and a tester see) kept for the panel.

Everything here runs on the GUI's asyncio loop; the microphone's PortAudio thread only queues blocks (the
simulator's Microphone), and the panel reads ``state``, ``subtitles`` and ``version`` from its timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from server.protocol.messages import ListenMode
from simulator.audio_devices import AudioDevice, list_devices, pick_device
from simulator.client import DeviceClient
from simulator.errors import SimulatorError
from simulator.events import Event
from simulator.identity import DeviceIdentity
from simulator.inputs import FileSource
from simulator.microphone import Microphone
from simulator.session import ConnectOptions, DeviceSession, create_client
from simulator.speaker import Speaker
from simulator.terminal import Terminal, describe

Source = Literal["microphone", "file"]
SUBTITLE_LINES = 300


def microphones() -> tuple[list[AudioDevice], str]:
    """The input devices PortAudio sees, and a note when there are none (no sound card, no PortAudio)."""
    try:
        devices = [d for d in list_devices() if d.inputs > 0]
    except SimulatorError as exc:
        return [], str(exc)
    return devices, "" if devices else "no microphone (PortAudio sees no input device): use a file"


@dataclass
class SimulatorChoice:
    source: Source = "file"
    microphone: int | None = None  # a device index; None: the default input
    file: Path | None = None
    mode: ListenMode = "auto"  # "manual" = push to talk
    speaker: bool = True


class PanelTerminal(Terminal):
    """The simulator's subtitles, kept in a bounded list for the panel instead of printed."""

    def __init__(self) -> None:
        super().__init__(quiet=False)
        self.lines: deque[str] = deque(maxlen=SUBTITLE_LINES)
        self.version = 0

    def show(self, event: Event) -> None:
        line = describe(event)
        if line is not None:
            self.say(line)

    def say(self, line: str) -> None:
        self.lines.append(f"{time.strftime('%H:%M:%S')}  {line}")
        self.version += 1

    def note(self, line: str) -> None:
        self.say(f"({line})")


class SimulatedDevice:
    def __init__(self, server_url: str, choice: SimulatorChoice) -> None:
        self.server_url = server_url
        self.choice = choice
        self.identity = DeviceIdentity.generate()
        self.terminal = PanelTerminal()
        self.session: DeviceSession | None = None
        self.microphone: Microphone | None = None
        self._stop = asyncio.Event()
        self._live: asyncio.Task[None] | None = None
        self.talking = False

    @property
    def device_id(self) -> str:
        return self.identity.device_id

    @property
    def client(self) -> DeviceClient | None:
        return None if self.session is None else self.session.client

    @property
    def state(self) -> str:
        client = self.client
        if client is None:
            return "stopped"
        return client.state if client.connected else "disconnected"

    @property
    def session_id(self) -> str:
        client = self.client
        return "" if client is None else client.session_id

    async def start(self) -> None:
        """Connect to the server; with a microphone, start streaming it (auto mode listens at once)."""
        choice = self.choice
        if choice.source == "file" and choice.file is None:
            raise SimulatorError("choose an audio file to speak")
        if choice.source == "file":
            FileSource(choice.file)  # type: ignore[arg-type]  # a bad file fails here, before connecting
        speaker = self._speaker() if choice.speaker else None
        client = await create_client(ConnectOptions(server=self.server_url, identity=self.identity), self.terminal)
        self.session = DeviceSession(client, self.terminal, speaker, mode=choice.mode)
        await self.session.start()
        self.terminal.note(f"connected as {self.device_id}: session {client.session_id}")
        if choice.source == "microphone":
            self.microphone = Microphone(pick_device(choice.microphone, "input"))
            self.microphone.start()
            self._live = asyncio.get_running_loop().create_task(
                self.session.live(self.microphone, None, self._stop), name="console-sim-live"
            )

    def _speaker(self) -> Speaker | None:
        try:
            return Speaker(pick_device(None, "output"))
        except SimulatorError as exc:
            self.terminal.note(f"no speaker: {exc}")
            return None

    async def speak_file(self) -> None:
        """The chosen file into the device's microphone in real time, then wait for the reply."""
        if self.session is None or self.choice.file is None:
            raise SimulatorError("start the simulated device with a file first")
        source = FileSource(self.choice.file)
        await self.session.speak(source, self.choice.file.name, self.choice.mode)

    async def say_text(self, text: str) -> None:
        if self.session is None:
            raise SimulatorError("start the simulated device first")
        await self.session.say_text(text)

    async def press(self) -> None:
        """Push to talk: the button went down (the microphone streams while the device listens)."""
        if self.session is None:
            return
        await self.session.ensure_connected()
        self.talking = True
        await self.session.client.listen_start("manual")

    async def release(self) -> None:
        if self.session is None or not self.talking:
            return
        self.talking = False
        with contextlib.suppress(SimulatorError):
            await self.session.client.listen_stop()

    async def stop(self) -> None:
        self._stop.set()
        if self._live is not None:
            self._live.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._live
            self._live = None
        if self.microphone is not None:
            self.microphone.close()
            self.microphone = None
        if self.session is not None:
            await self.session.close()
        self.terminal.note("stopped")
