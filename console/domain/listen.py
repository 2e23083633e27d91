"""Listening in to a live device (no Qt): its uplink (what the microphone hears, 16 kHz) or downlink (what the
server says, 24 kHz) opus frames from the LiveFeed → a decoder thread → a small jitter buffer → the sound card.

The asyncio side only moves packets from the feed's bounded queue into the decoder's bounded queue (dropping
the oldest when full); decoding and opening the output happen on the decoder thread; PortAudio's thread only
copies from the jitter buffer. No output device is a normal state: the note says so and the waveform of what
is heard is still kept for the view (``recent_pcm``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from typing import Any, Literal

import numpy as np

from console.domain.player import NoOutputDevice, _sounddevice, stream_closed, stream_opened
from server.audio.decoder import InvalidOpusPacket, OpusDecoder
from server.live.feed import LiveFeed, Subscription

log = logging.getLogger(__name__)
Direction = Literal["uplink", "downlink"]
PREFILL_FRAMES = 3  # 180 ms of 60 ms frames before playing starts (and again after running dry)
MAX_BUFFER_S = 1.0  # beyond this the oldest audio goes: listening in stays live, never drifts behind
SCOPE_S = 2.0  # how much of what was heard the view's waveform shows


class JitterBuffer:
    """Decoded PCM for the sound card's thread. Starts releasing once ``prefill`` samples are in; when it
    runs dry it plays silence and fills up again; beyond ``limit`` samples the oldest are dropped."""

    def __init__(self, prefill: int, limit: int) -> None:
        self.prefill = prefill
        self.limit = limit
        self._data = np.zeros(0, np.int16)
        self._lock = threading.Lock()
        self._playing = False
        self.underruns = 0
        self.dropped = 0
        self.played = 0

    def push(self, pcm: np.ndarray) -> None:
        with self._lock:
            data = np.concatenate([self._data, pcm])
            if len(data) > self.limit:
                self.dropped += len(data) - self.limit
                data = data[-self.limit :]
            self._data = data
            if len(data) >= self.prefill:
                self._playing = True

    def read_into(self, out: np.ndarray) -> int:
        """Fill ``out`` (int16) with what is due, silence for the rest; returns the samples of audio."""
        with self._lock:
            n = min(len(out), len(self._data)) if self._playing else 0
            out[:n] = self._data[:n]
            self._data = self._data[n:]
            if self._playing and n < len(out):
                self._playing = False
                self.underruns += 1
        out[n:] = 0
        self.played += n
        return n

    @property
    def queued(self) -> int:
        return len(self._data)


class ListenIn:
    def __init__(
        self, feed: LiveFeed, device_id: str, direction: Direction, *, play: bool = True, max_packets: int = 64
    ) -> None:
        self.feed = feed
        self.device_id = device_id
        self.direction = direction
        self.play = play
        self.note = "waiting for audio…"
        self.frames_received = 0
        self.frames_decoded = 0
        self.bad_packets = 0
        self.sample_rate = 16000 if direction == "uplink" else 24000
        self.scope_version = 0
        self.jitter: JitterBuffer | None = None
        self._packets: queue.Queue[tuple[bytes, int] | None] = queue.Queue(maxsize=max_packets)
        self._subscription: Subscription | None = None
        self._pump: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._scope = np.zeros(int(SCOPE_S * 48000), np.int16)
        self._scope_lock = threading.Lock()
        self._stream: Any = None

    @property
    def active(self) -> bool:
        return self._subscription is not None

    def start(self) -> None:
        self._subscription = self.feed.subscribe(device_id=self.device_id, audio=True, maxsize=256)
        self._pump = asyncio.get_running_loop().create_task(self._forward(self._subscription), name="listen-in")
        self._thread = threading.Thread(target=self._decode_loop, name=f"listen-in {self.device_id}", daemon=True)
        self._thread.start()

    async def _forward(self, subscription: Subscription) -> None:
        async for event in subscription:
            if event.kind != self.direction or not isinstance(event.data.get("packet"), bytes):
                continue
            self.frames_received += 1
            item = (event.data["packet"], int(event.data.get("sample_rate", self.sample_rate)))
            try:
                self._packets.put_nowait(item)
            except queue.Full:  # the decoder fell behind: the newest audio matters, drop the oldest
                with contextlib.suppress(queue.Empty):
                    self._packets.get_nowait()
                with contextlib.suppress(queue.Full):
                    self._packets.put_nowait(item)

    # ---- the decoder thread ---------------------------------------------------------------------------

    def _decode_loop(self) -> None:
        decoder: OpusDecoder | None = None
        try:
            while (item := self._packets.get()) is not None:
                packet, rate = item
                if decoder is None or decoder.sample_rate != rate:
                    decoder = OpusDecoder(rate)
                    self.sample_rate = rate
                    self._open_output(rate)
                try:
                    pcm = decoder.decode(packet)
                except InvalidOpusPacket:
                    self.bad_packets += 1
                    continue
                self.frames_decoded += 1
                self._keep_for_scope(pcm)
                if self.jitter is not None:
                    self.jitter.push(pcm)
        finally:
            self._close_output()

    def _keep_for_scope(self, pcm: np.ndarray) -> None:
        with self._scope_lock:
            n = min(len(pcm), len(self._scope))
            self._scope = np.concatenate([self._scope[n:], pcm[-n:]])
            self.scope_version += 1

    @property
    def output_open(self) -> bool:
        """A PortAudio output stream is open (playing what is heard)."""
        return self._stream is not None

    def recent_pcm(self) -> tuple[np.ndarray, int]:
        """The last ``SCOPE_S`` seconds heard (int16) and their rate."""
        with self._scope_lock:
            return self._scope[-int(SCOPE_S * self.sample_rate) :].copy(), self.sample_rate

    def _open_output(self, rate: int) -> None:
        self._close_output()
        if not self.play:
            self.note = f"listening to the {self.direction} (sound off)"
            return
        try:
            sd = _sounddevice()
            if not any(d["max_output_channels"] > 0 for d in sd.query_devices()):
                raise NoOutputDevice("no output device")
            jitter = JitterBuffer(PREFILL_FRAMES * rate * 60 // 1000, int(MAX_BUFFER_S * rate))
            stream = sd.OutputStream(samplerate=rate, channels=1, dtype="int16", blocksize=rate // 50,
                                     callback=lambda out, frames, _t, _s: jitter.read_into(out[:, 0]))  # fmt: skip
            stream.start()
        except NoOutputDevice:
            self.note = f"no output device: showing the {self.direction} waveform only"
            return
        except Exception as exc:  # PortAudioError and friends: same state as no device at all
            self.note = f"no output device ({' '.join(str(exc).split())}): showing the waveform only"
            return
        self.jitter, self._stream = jitter, stream
        stream_opened(stream)
        self.note = f"playing the {self.direction} ({rate} Hz)"

    def _close_output(self) -> None:
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.stop()
            with contextlib.suppress(Exception):
                stream.close()
            stream_closed(stream)
            self._stream = None  # only now: `output_open` is what lets PortAudio be re-initialised

    # ---- stopping -----------------------------------------------------------------------------------

    async def stop(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            subscription.close()  # the server stops producing frames once nobody listens
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None
        thread, self._thread = self._thread, None
        if thread is not None:
            with contextlib.suppress(queue.Empty):
                while True:  # nothing left to decode: make room for the stop marker without waiting
                    self._packets.get_nowait()
            self._packets.put_nowait(None)
            await asyncio.to_thread(thread.join, 5)
