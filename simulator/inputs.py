"""What the simulated device's microphone hears: 16 kHz mono int16 PCM in 60 ms frames, as the firmware
captures it, encoded to opus like the firmware's uplink, streamed in real time or as fast as possible.

Sources load their audio up front so that a bad file fails before anything is sent to the server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import opuslib_next
import soundfile

from server.protocol.messages import ListenMode
from simulator.errors import SimulatorError

if TYPE_CHECKING:
    from simulator.client import DeviceClient

__all__ = [
    "FRAME_MS",
    "FRAME_SAMPLES",
    "RATE",
    "AudioSource",
    "FileSource",
    "PcmSource",
    "SilenceSource",
    "UplinkEncoder",
    "resample",
    "speak",
    "speak_file",
]

RATE = 16000
FRAME_MS = 60
FRAME_SAMPLES = RATE * FRAME_MS // 1000  # 960


def resample(samples: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Band-limited resampling with numpy only: windowed-sinc low-pass below the lower Nyquist, then
    linear interpolation.  Plenty for speech going to a 16 kHz ASR; float64 in, float64 out."""
    x = np.asarray(samples, dtype=np.float64)
    if src == dst or not len(x):
        return x
    cutoff = 0.45 * min(src, dst) / src  # cycles per input sample
    taps = np.arange(-64, 65)
    kernel = 2 * cutoff * np.sinc(2 * cutoff * taps) * np.blackman(taps.size)
    filtered = np.convolve(x, kernel / kernel.sum(), mode="same")
    n_out = int(len(x) * dst / src)
    return np.interp(np.arange(n_out) * (src / dst), np.arange(len(x)), filtered)


def _to_int16(samples: np.ndarray) -> np.ndarray:
    return np.clip(np.round(samples), -32768, 32767).astype(np.int16)


class AudioSource:
    """16 kHz mono int16 PCM cut into 60 ms frames (the last one zero-padded)."""

    def __init__(self, pcm: np.ndarray) -> None:
        self.pcm = np.asarray(pcm, dtype=np.int16).reshape(-1)

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / RATE

    def frames(self) -> Iterator[np.ndarray]:
        pcm = self.pcm
        for start in range(0, len(pcm), FRAME_SAMPLES):
            frame = pcm[start : start + FRAME_SAMPLES]
            if len(frame) < FRAME_SAMPLES:
                frame = np.concatenate([frame, np.zeros(FRAME_SAMPLES - len(frame), dtype=np.int16)])
            yield frame

    async def stream(self, realtime: bool = True) -> AsyncIterator[np.ndarray]:
        """Frames as a microphone delivers them: one per 60 ms on an absolute schedule (no drift), or
        back to back when ``realtime`` is False (still yielding to the event loop between frames)."""
        start = time.monotonic()
        for n, frame in enumerate(self.frames()):
            if realtime:
                delay = start + n * FRAME_MS / 1000 - time.monotonic()
                await asyncio.sleep(max(0.0, delay))
            else:
                await asyncio.sleep(0)
            yield frame


class PcmSource(AudioSource):
    """Audio already in memory, at any rate (resampled to 16 kHz)."""

    def __init__(self, pcm: np.ndarray, sample_rate: int = RATE) -> None:
        data = np.asarray(pcm)
        if data.ndim == 2:
            data = data.mean(axis=1)
        super().__init__(_to_int16(resample(data, sample_rate, RATE)) if sample_rate != RATE else data)


class SilenceSource(AudioSource):
    def __init__(self, ms: float) -> None:
        if ms < 0:
            raise ValueError(f"silence must be >= 0 ms, got {ms}")
        super().__init__(np.zeros(round(RATE * ms / 1000), dtype=np.int16))


class FileSource(AudioSource):
    """Any file libsndfile reads (WAV, FLAC, Ogg Vorbis/Opus, MP3…), mixed to mono and resampled to 16 kHz."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            data, rate = soundfile.read(self.path, dtype="float32", always_2d=True)
        except (RuntimeError, OSError, ValueError, TypeError, EOFError) as exc:
            # LibsndfileError (a RuntimeError) says e.g. "Format not recognised"; keep only its reason.
            reason = getattr(exc, "error_string", None) or getattr(exc, "strerror", None) or str(exc)
            raise SimulatorError(f"cannot read audio file {self.path}: {' '.join(str(reason).split())}") from None
        if not len(data):
            raise SimulatorError(f"cannot read audio file {self.path}: it contains no audio")
        mono = data.mean(axis=1) * 32767.0
        super().__init__(_to_int16(resample(mono, rate, RATE)))
        self.source_rate = rate


class UplinkEncoder:
    """The firmware's mic encoder: opus VOIP mode, 16 kHz mono, 60 ms frames.

    (``server.audio.encoder.OpusEncoder`` is tuned for TTS: APPLICATION_AUDIO at 24 kHz.)
    """

    def __init__(self, complexity: int = 5, bitrate: int | None = None) -> None:
        self._encoder = opuslib_next.Encoder(RATE, 1, opuslib_next.APPLICATION_VOIP)
        self._encoder.complexity = complexity
        if bitrate is not None:
            self._encoder.bitrate = bitrate

    def encode(self, frame: np.ndarray) -> bytes:
        frame = np.asarray(frame, dtype=np.int16)
        if len(frame) != FRAME_SAMPLES:
            raise ValueError(f"a frame is {FRAME_SAMPLES} samples, got {len(frame)}")
        return self._encoder.encode(frame.tobytes(), FRAME_SAMPLES)


async def _stream(client: DeviceClient, source: AudioSource, encoder: UplinkEncoder, realtime: bool) -> int:
    sent = 0
    async for frame in source.stream(realtime):
        if await client.send_opus(encoder.encode(frame)):
            sent += 1
    return sent


async def speak(
    client: DeviceClient,
    source: AudioSource,
    mode: ListenMode = "auto",
    *,
    realtime: bool = True,
    trailing_silence_ms: float = 1000,
) -> int:
    """Say ``source`` to the server like a user talking to the device; returns the packets sent.

    ``listen start`` → the speech → in auto/realtime mode ``trailing_silence_ms`` of silence so the
    server's VAD can end the turn (packets stop by themselves once the device starts speaking: the
    firmware mutes the mic); in manual mode ``listen stop`` (button released).  Wait for the answer
    with ``client.wait_for_turn()``.
    """
    encoder = UplinkEncoder()
    await client.listen_start(mode)
    sent = await _stream(client, source, encoder, realtime)
    if mode == "manual":
        await client.listen_stop()  # marks the end of speech itself
        return sent
    client.mark_end_of_speech()
    return sent + await _stream(client, SilenceSource(trailing_silence_ms), encoder, realtime)


async def speak_file(
    client: DeviceClient,
    path: Path | str,
    mode: ListenMode = "auto",
    realtime: bool = True,
    *,
    trailing_silence_ms: float = 1000,
) -> int:
    """:func:`speak` an audio file (SimulatorError before anything is sent if the file is unreadable)."""
    return await speak(client, FileSource(path), mode, realtime=realtime, trailing_silence_ms=trailing_silence_ms)
