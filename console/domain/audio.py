"""Recordings as the console plays and saves them: Ogg Opus → PCM (off the GUI thread), WAV, waveform
peaks, and a whole-session track with each message's place on it."""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass

import numpy as np

from server.audio.decoder import OpusDecoder
from server.audio.ogg_opus import OPUS_PRE_SKIP, read_ogg_opus_packets
from server.storage.models import AudioFile

PLAY_RATE = 24000  # every clip is decoded at this rate, so a session's clips join into one track
SESSION_GAP_S = 0.4  # silence between clips in the whole-session track


@dataclass(frozen=True, slots=True)
class Clip:
    pcm: np.ndarray  # int16 mono at ``rate``
    rate: int

    @property
    def seconds(self) -> float:
        return len(self.pcm) / self.rate


def decode_ogg_opus(data: bytes, rate: int = PLAY_RATE) -> Clip:
    """Decode a stored Ogg Opus file (CPU work: call it through ``call_in_thread``)."""
    packets, _input_rate, channels = read_ogg_opus_packets(data)
    decoder = OpusDecoder(rate, 1 if channels == 1 else 2)
    chunks = [decoder.decode(p) for p in packets]
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    if pcm.ndim == 2:
        pcm = pcm.mean(axis=1).astype(np.int16)
    skip = OPUS_PRE_SKIP * rate // 48000
    return Clip(pcm[skip:], rate)


def decode_audio(data: bytes, file_type: str, rate: int = PLAY_RATE) -> Clip:
    if file_type == "opus":
        return decode_ogg_opus(data, rate)
    if file_type == "wav":
        with wave.open(io.BytesIO(data)) as w:
            raw = np.frombuffer(w.readframes(w.getnframes()), np.int16)
            if w.getnchannels() > 1:
                raw = raw.reshape(-1, w.getnchannels()).mean(axis=1).astype(np.int16)
            return Clip(raw, w.getframerate())
    raise ValueError(f"cannot play {file_type} audio in the console")


def wav_bytes(clip: Clip) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(clip.rate)
        w.writeframes(clip.pcm.astype("<i2").tobytes())
    return out.getvalue()


def peaks(pcm: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Min/max per bucket (peak downsampling): a waveform of any length in ``2*buckets`` points."""
    if len(pcm) == 0 or buckets <= 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    buckets = min(buckets, len(pcm))
    usable = len(pcm) - len(pcm) % buckets
    shaped = pcm[:usable].reshape(buckets, -1).astype(np.float32) / 32768.0
    return shaped.min(axis=1), shaped.max(axis=1)


@dataclass(frozen=True, slots=True)
class Segment:
    message_id: str | None
    file_id: str
    start_s: float
    end_s: float


@dataclass(frozen=True, slots=True)
class SessionTrack:
    clip: Clip
    segments: tuple[Segment, ...]

    def segment_at(self, t: float) -> Segment | None:
        for seg in self.segments:
            if seg.start_s <= t < seg.end_s + SESSION_GAP_S:
                return seg
        return None

    def start_of(self, message_id: str) -> float | None:
        for seg in self.segments:
            if seg.message_id == message_id:
                return seg.start_s
        return None


def join_clips(parts: list[tuple[AudioFile, Clip]], rate: int = PLAY_RATE) -> SessionTrack:
    gap = np.zeros(int(SESSION_GAP_S * rate), np.int16)
    pcm: list[np.ndarray] = []
    segments = []
    t = 0.0
    for row, clip in parts:
        if clip.rate != rate:
            raise ValueError("clips must share one rate")
        segments.append(Segment(row.message_id, row.file_id, t, t + clip.seconds))
        pcm += [clip.pcm, gap]
        t += clip.seconds + SESSION_GAP_S
    joined = np.concatenate(pcm) if pcm else np.zeros(0, np.int16)
    return SessionTrack(Clip(joined, rate), tuple(segments))
