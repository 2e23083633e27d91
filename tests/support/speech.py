"""Real spoken audio for tests: espeak-ng speech at 16 kHz, silence, and device-like opus packets.

espeak-ng (Debian package ``espeak-ng``, listed in packaging/system-packages.txt) writes 22.05 kHz
WAVs; they are resampled to 16 kHz here with numpy only (windowed-sinc low-pass + interpolation),
trimmed of espeak's own leading/trailing silence so the spoken part is exactly the returned array,
and cached by text in the temp dir.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import io
import os
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import opuslib_next

__all__ = ["RATE", "heard_as", "noise", "silence", "spoken_pcm16k", "to_opus_packets"]

RATE = 16000
_CACHE_DIR = Path(tempfile.gettempdir()) / "xiaozhi-test-speech"
_TRIM_LEVEL = 100  # |sample| above this counts as the spoken part (espeak's pauses are exact zeros)


def silence(ms: float) -> np.ndarray:
    """``ms`` milliseconds of digital silence, int16 at 16 kHz."""
    return np.zeros(round(RATE * ms / 1000), dtype=np.int16)


def noise(ms: float, rms: float = 1000.0, seed: int = 0) -> np.ndarray:
    """White noise with the given RMS (int16 units; 1000 ≈ -30 dBFS), int16 at 16 kHz."""
    rng = np.random.default_rng(seed)
    samples = rng.standard_normal(round(RATE * ms / 1000)) * rms
    return np.clip(samples, -32768, 32767).astype(np.int16)


def _resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Band-limited resampling (good enough for tests): low-pass at 0.45·min(src, dst), then interpolate."""
    cutoff = 0.45 * min(src, dst) / src  # cycles per input sample
    taps = np.arange(-64, 65)
    kernel = 2 * cutoff * np.sinc(2 * cutoff * taps) * np.blackman(taps.size)
    filtered = np.convolve(x.astype(np.float64), kernel / kernel.sum(), mode="same")
    n_out = int(len(x) * dst / src)
    return np.interp(np.arange(n_out) * (src / dst), np.arange(len(x)), filtered)


@functools.cache
def _spoken(text: str, voice: str, speed: int) -> np.ndarray:
    key = hashlib.sha1(f"{voice}\0{speed}\0{text}".encode()).hexdigest()[:20]
    cached = _CACHE_DIR / f"{key}.npy"
    if cached.exists():
        return np.load(cached)
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng; see packaging/system-packages.txt)")
    wav_bytes = subprocess.run(
        [espeak, "-v", voice, "-s", str(speed), "--stdout", text], check=True, capture_output=True, timeout=30
    ).stdout
    with wave.open(io.BytesIO(wav_bytes)) as wav:
        rate = wav.getframerate()
        raw = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    pcm = np.clip(np.round(_resample(raw, rate, RATE)), -32768, 32767).astype(np.int16)
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > _TRIM_LEVEL)
    pcm = pcm[loud[0] : loud[-1] + 1] if loud.size else pcm[:0]
    _CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = _CACHE_DIR / f"{key}.{os.getpid()}.tmp.npy"
    np.save(tmp, pcm)
    tmp.replace(cached)
    return pcm


def spoken_pcm16k(text: str, voice: str = "en", speed: int = 160) -> np.ndarray:
    """``text`` spoken by espeak-ng: int16 mono at 16 kHz, starting and ending on speech (no padding)."""
    return _spoken(text, voice, speed).copy()


def to_opus_packets(pcm: np.ndarray, frame_ms: int = 60, bitrate: int = 24000) -> list[bytes]:
    """Encode 16 kHz int16 PCM as a device would (VOIP, ``frame_ms`` frames); the tail is zero-padded."""
    n = RATE * frame_ms // 1000
    encoder = opuslib_next.Encoder(RATE, 1, opuslib_next.APPLICATION_VOIP)
    encoder.bitrate = bitrate
    pcm = np.asarray(pcm, dtype=np.int16)
    padded = np.concatenate([pcm, np.zeros(-len(pcm) % n, dtype=np.int16)])
    return [encoder.encode(padded[i : i + n].tobytes(), n) for i in range(0, len(padded), n)]


def heard_as(heard: str, said: str, at_least: float = 0.7) -> bool:
    """Whether a transcription is the phrase that was said, give or take a misheard word: Whisper tiny on
    espeak's voice through a PulseAudio loop once heard "What type of it?" for "what time is it" (a similarity
    of 0.73), while audio that did not arrive gives "you" or nothing (0 – 0.25)."""

    def words(text: str) -> str:
        return " ".join("".join(c if c.isalnum() else " " for c in text.lower()).split())

    return difflib.SequenceMatcher(None, words(heard), words(said)).ratio() >= at_least
