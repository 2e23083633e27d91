"""The simulated device's speaker: decoded reply audio out through a sounddevice output stream.

Timing is the device core's: :class:`~simulator.playback.PlaybackQueue` holds the 2–4 frame jitter buffer,
drops what does not fit in the firmware's 40-frame queue and releases each packet when its turn to play
comes (an ``AudioPlayed`` event).  The speaker only has to make that audible: it appends the PCM of each
released packet to a small buffer that PortAudio's callback drains in real time, filling silence when it
runs dry.  The callback copies from the buffer and nothing else.  A device that cannot play the downlink's
rate (24 or 16 kHz) is opened at its own rate and the audio resampled.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from typing import Any

import numpy as np

from simulator.audio_devices import AudioDevice, sounddevice_module
from simulator.errors import SimulatorError
from simulator.microphone import StreamResampler

__all__ = ["Speaker"]


class Speaker:
    def __init__(self, device: AudioDevice, *, max_buffer_s: float = 3.0) -> None:
        self.device = device
        self.max_buffer_s = max_buffer_s
        self.sample_rate = 0  # the rate of the audio given to play()
        self.device_rate = 0  # the rate the stream runs at
        self.frames_played = 0  # samples handed to PortAudio that carried audio
        self.overflowed = 0  # samples dropped because more than max_buffer_s was waiting
        self.underflows = 0  # PortAudio reported output underflow
        self._chunks: deque[np.ndarray] = deque()
        self._queued = 0
        self._lock = threading.Lock()
        self._stream: Any = None
        self._resampler: StreamResampler | None = None

    def _open(self, sample_rate: int) -> None:
        sd = sounddevice_module()
        self.close()
        attempts = [sample_rate]
        native = round(self.device.default_rate)
        if native != sample_rate:
            attempts.append(native)
        last: Exception | None = None
        for rate in attempts:
            try:
                stream = sd.OutputStream(
                    device=self.device.index, channels=1, dtype="int16", samplerate=rate, callback=self._callback
                )
                stream.start()
            except (sd.PortAudioError, ValueError) as exc:
                last = exc
                continue
            self._stream, self.device_rate, self.sample_rate = stream, rate, sample_rate
            self._resampler = StreamResampler(sample_rate, rate) if rate != sample_rate else None
            return
        raise SimulatorError(f"cannot play on audio device {self.device}: {' '.join(str(last).split())}")

    def play(self, pcm: np.ndarray, sample_rate: int) -> None:
        """Queue int16 mono PCM for playing now (after what is already queued)."""
        if self._stream is None or sample_rate != self.sample_rate:
            self._open(sample_rate)
        data = np.asarray(pcm, dtype=np.int16)
        if self._resampler is not None:
            data = np.clip(np.round(self._resampler.process(data)), -32768, 32767).astype(np.int16)
        limit = int(self.max_buffer_s * self.device_rate)
        with self._lock:
            self._chunks.append(data)
            self._queued += len(data)
            while self._queued > limit and self._chunks:
                dropped = self._chunks.popleft()
                self._queued -= len(dropped)
                self.overflowed += len(dropped)

    @property
    def queued_s(self) -> float:
        return self._queued / self.device_rate if self.device_rate else 0.0

    def _callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status.output_underflow:
            self.underflows += 1
        out = outdata[:, 0]
        filled = 0
        with self._lock:
            while filled < frames and self._chunks:
                chunk = self._chunks[0]
                take = min(frames - filled, len(chunk))
                out[filled : filled + take] = chunk[:take]
                filled += take
                if take == len(chunk):
                    self._chunks.popleft()
                else:
                    self._chunks[0] = chunk[take:]
            self._queued -= filled
        out[filled:] = 0
        self.frames_played += filled

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait until everything queued has been handed to the sound system."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._queued > 0 and self._stream is not None:  # noqa: ASYNC110 - filled by PortAudio's thread
                    await asyncio.sleep(0.02)

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.stop()
            stream.close()
        with self._lock:
            self._chunks.clear()
            self._queued = 0
