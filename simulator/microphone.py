"""The laptop's microphone as the simulated device's mic: a sounddevice input stream → a bounded queue →
16 kHz mono int16 frames of 60 ms for the uplink encoder, as the firmware captures them.

PortAudio calls back on its own thread; the callback only copies the block into a bounded deque (the
oldest block is dropped, and counted, if the event loop falls that far behind) and wakes the loop, so the
audio thread never waits for Python work (Friture's pattern).  A device that cannot record at 16 kHz is
opened at its own rate and resampled here.

:class:`SpeechEndDetector` is a small energy gate on the same frames: the device does not know when its
user stopped talking (the server's VAD decides), but the latency a person feels runs from there, so the
simulator marks that moment itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from simulator.audio_devices import AudioDevice, sounddevice_module
from simulator.errors import SimulatorError
from simulator.inputs import FRAME_MS, FRAME_SAMPLES, RATE

__all__ = ["Microphone", "SpeechEndDetector", "StreamResampler"]


class StreamResampler:
    """Block-by-block band-limited resampling (windowed-sinc low-pass, then interpolation), keeping enough
    history between blocks that the output has no seams.  Float in, float out."""

    HALF = 32

    def __init__(self, src: int | float, dst: int | float) -> None:
        self.step = src / dst  # input samples per output sample
        cutoff = 0.45 * min(src, dst) / src
        taps = np.arange(-self.HALF, self.HALF + 1)
        kernel = 2 * cutoff * np.sinc(2 * cutoff * taps) * np.blackman(taps.size)
        self.kernel = kernel / kernel.sum()
        self._buf = np.zeros(2 * self.HALF)  # leading zeros: the filter's start-up
        self._pos = 0.0  # next output position, in indexes of the filtered buffer

    def process(self, block: np.ndarray) -> np.ndarray:
        self._buf = np.concatenate([self._buf, np.asarray(block, dtype=np.float64)])
        filtered = np.convolve(self._buf, self.kernel, mode="valid")  # filtered[j] is centred on buf[j + HALF]
        last = len(filtered) - 1
        if last < self._pos:
            return np.zeros(0)
        n = int((last - self._pos) // self.step) + 1
        positions = self._pos + np.arange(n) * self.step
        out = np.interp(positions, np.arange(len(filtered)), filtered)
        self._pos += n * self.step
        drop = int(self._pos)  # filtered[drop] still needs buf[drop:]
        self._buf = self._buf[drop:]
        self._pos -= drop
        return out


def _to_int16(samples: np.ndarray) -> np.ndarray:
    return np.clip(np.round(samples), -32768, 32767).astype(np.int16)


class Microphone:
    """``async with Microphone(device) as mic: async for frame in mic.frames(): …``"""

    def __init__(self, device: AudioDevice, *, max_queued_blocks: int = 50) -> None:
        self.device = device
        self.rate = 0  # the rate the device records at
        self.overflows = 0  # PortAudio lost input (the callback ran late)
        self.dropped = 0  # blocks dropped because the event loop did not collect them in time
        self._blocks: deque[np.ndarray] = deque(maxlen=max_queued_blocks)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stream: Any = None
        self._resampler: StreamResampler | None = None
        self._closed = threading.Event()
        self.blocks_received = 0

    async def __aenter__(self) -> Microphone:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        sd = sounddevice_module()
        self._loop = asyncio.get_running_loop()
        attempts = [(RATE, 1)]
        native = round(self.device.default_rate)
        if native != RATE:
            attempts.append((native, 1))
        if self.device.inputs >= 2:
            attempts += [(rate, 2) for rate, _ in list(attempts)]
        last: Exception | None = None
        for rate, channels in attempts:
            try:
                stream = sd.InputStream(
                    device=self.device.index,
                    channels=channels,
                    dtype="int16",
                    samplerate=rate,
                    blocksize=rate * FRAME_MS // 1000,
                    callback=self._callback,
                )
            except (sd.PortAudioError, ValueError) as exc:
                last = exc
                continue
            try:
                stream.start()
            except sd.PortAudioError as exc:
                stream.close()
                last = exc
                continue
            self._stream, self.rate = stream, rate
            self._resampler = StreamResampler(rate, RATE) if rate != RATE else None
            return
        raise SimulatorError(f"cannot record from audio device {self.device}: {' '.join(str(last).split())}")

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        # PortAudio's thread: copy, queue, wake the loop; nothing else.
        if status.input_overflow:
            self.overflows += 1
        block = indata.mean(axis=1).astype(np.int16) if indata.shape[1] > 1 else indata[:, 0].copy()
        self.blocks_received += 1
        if len(self._blocks) == self._blocks.maxlen:
            self.dropped += 1
        self._blocks.append(block)
        loop = self._loop
        if loop is not None and not self._closed.is_set():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._wake.set)

    async def wait_ready(self, timeout: float = 5.0) -> bool:
        """Wait for the first recorded block: a sound server can take a second to start capturing, and what
        is said before that is lost.  False if nothing came within ``timeout``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.blocks_received == 0:  # noqa: ASYNC110 - counted on PortAudio's thread
                    await asyncio.sleep(0.02)
        return self.blocks_received > 0

    async def frames(self) -> AsyncIterator[np.ndarray]:
        """60 ms frames of 16 kHz int16 as they are recorded, until :meth:`close`."""
        pending = np.zeros(0, dtype=np.int16)
        while not self._closed.is_set():
            if not self._blocks:
                self._wake.clear()
                if not self._blocks:
                    await self._wake.wait()
                continue
            block = self._blocks.popleft()
            if self._resampler is not None:
                block = _to_int16(self._resampler.process(block))
            pending = np.concatenate([pending, block])
            while len(pending) >= FRAME_SAMPLES:
                frame, pending = pending[:FRAME_SAMPLES], pending[FRAME_SAMPLES:]
                yield frame

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.stop()
            stream.close()


class SpeechEndDetector:
    """Energy gate: ``feed`` each frame; returns the time the speech ended once ``hangover_ms`` of quiet
    followed at least ``min_speech_ms`` of speech, else None."""

    def __init__(self, threshold_rms: float = 400.0, min_speech_ms: int = 180, hangover_ms: int = 300) -> None:
        self.threshold = threshold_rms
        self.min_speech = max(1, min_speech_ms // FRAME_MS)
        self.hangover = max(1, hangover_ms // FRAME_MS)
        self._voiced = 0
        self._quiet = 0
        self._last_voiced_at: float | None = None

    def reset(self) -> None:
        self._voiced = self._quiet = 0
        self._last_voiced_at = None

    @property
    def speaking(self) -> bool:
        return self._voiced >= self.min_speech and self._quiet < self.hangover

    def feed(self, frame: np.ndarray, at: float) -> float | None:
        rms = float(np.sqrt(np.mean(np.square(frame, dtype=np.float64))))
        if rms >= self.threshold:
            self._voiced += 1
            self._quiet = 0
            self._last_voiced_at = at
            return None
        if self._voiced == 0:
            return None
        self._quiet += 1
        if self._quiet < self.hangover:
            return None
        ended = self._last_voiced_at if self._voiced >= self.min_speech else None
        self.reset()
        return ended
