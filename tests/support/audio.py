"""Real opus packets for tests: a speech-like signal encoded by libopus, as a device would send."""

from __future__ import annotations

import numpy as np
import opuslib_next


def speech_like(rate: int, seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    pitch = 140 + 30 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    signal = (voiced * envelope + 0.05 * rng.standard_normal(t.size)) * 6000
    pcm = np.clip(signal, -32768, 32767).astype(np.int16)
    if channels == 2:
        pcm = np.stack([pcm, pcm // 2], axis=1)
    return pcm


def encode_opus(rate: int, frame_ms: int, seconds: float, channels: int = 1) -> list[bytes]:
    encoder = opuslib_next.Encoder(rate, channels, opuslib_next.APPLICATION_VOIP)
    pcm = speech_like(rate, seconds, channels)
    n = rate * frame_ms // 1000
    return [encoder.encode(pcm[i : i + n].tobytes(), n) for i in range(0, len(pcm) - n + 1, n)]
