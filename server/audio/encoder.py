"""int16 PCM → opus packets for the downlink (TTS), one encoder per utterance stream.

Complexity 5 instead of libopus' default 10: measured here, a 60 ms frame at 24 kHz costs 0.22 ms
instead of 0.58 ms, which is what lets one core speak to ~270 devices instead of ~100.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import opuslib_next

_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


class OpusEncoder:
    def __init__(self, sample_rate: int = 24000, frame_ms: int = 60, *, complexity: int = 5, bitrate: int = 24000):
        if sample_rate not in _OPUS_RATES:
            raise ValueError(f"opus cannot encode at {sample_rate} Hz (one of {_OPUS_RATES})")
        if frame_ms not in (10, 20, 40, 60):
            raise ValueError(f"frame_ms must be 10, 20, 40 or 60, got {frame_ms}")
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * frame_ms // 1000
        self._encoder = opuslib_next.Encoder(sample_rate, 1, opuslib_next.APPLICATION_AUDIO)
        self._encoder.complexity = complexity
        self._encoder.bitrate = bitrate
        self._pending = np.zeros(0, dtype=np.int16)

    def encode(self, pcm: np.ndarray) -> Iterator[bytes]:
        """Packets for every whole frame available; the remainder waits for more PCM or ``flush``."""
        data = np.concatenate([self._pending, np.asarray(pcm, dtype=np.int16).reshape(-1)])
        n = self.frame_samples
        whole = len(data) // n * n
        for start in range(0, whole, n):
            yield self._encoder.encode(data[start : start + n].tobytes(), n)
        self._pending = data[whole:]

    def flush(self) -> Iterator[bytes]:
        """The last partial frame, padded with silence."""
        if len(self._pending):
            padded = np.zeros(self.frame_samples, dtype=np.int16)
            padded[: len(self._pending)] = self._pending
            self._pending = np.zeros(0, dtype=np.int16)
            yield self._encoder.encode(padded.tobytes(), self.frame_samples)
