"""Optional WAV recording of a simulated conversation: left channel = what the device sent (mic),
right channel = what it played (speaker), both at 16 kHz on one wall-clock timeline.

Packets are decoded here, each direction with its own decoder (opus decodes at any rate, so TTS sent at
24 kHz lands at 16 kHz without resampling).  A chunk is placed at the time it was sent or played; when a
direction runs faster than real time (a file streamed as fast as possible) its chunks are laid end to end
instead of overlapping.  Audio is kept in memory and written on :meth:`close` (16 kHz int16 stereo is
~3.8 MB per minute).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile

from server.audio.decoder import InvalidOpusPacket, OpusDecoder
from simulator.errors import SimulatorError

__all__ = ["ConversationRecorder"]

RATE = 16000


class _Track:
    def __init__(self) -> None:
        self.decoder = OpusDecoder(RATE)
        self.chunks: list[tuple[int, np.ndarray]] = []
        self.cursor = 0  # first free sample

    def add(self, offset: int, pcm: np.ndarray) -> None:
        start = max(offset, self.cursor)
        self.chunks.append((start, pcm))
        self.cursor = start + len(pcm)


class ConversationRecorder:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._t0: float | None = None
        self._up = _Track()
        self._down = _Track()
        self.closed = False

    def _offset(self, at: float) -> int:
        if self._t0 is None:
            self._t0 = at
        return max(0, round((at - self._t0) * RATE))

    def _add(self, track: _Track, packet: bytes, at: float) -> None:
        if self.closed:
            return
        try:
            pcm = track.decoder.decode(packet)
        except InvalidOpusPacket:
            return  # the client reports bad packets; the recording just has a gap there
        track.add(self._offset(at), pcm)

    def uplink(self, packet: bytes, at: float) -> None:
        """A mic packet sent at monotonic time ``at``."""
        self._add(self._up, packet, at)

    def downlink(self, packet: bytes, at: float) -> None:
        """A speaker packet that started playing at monotonic time ``at``."""
        self._add(self._down, packet, at)

    def downlink_reset(self) -> None:
        """A new reply: the device resets its decoder, so does the recording."""
        self._down.decoder.reset()

    @property
    def duration_s(self) -> float:
        return max(self._up.cursor, self._down.cursor) / RATE

    def close(self) -> Path:
        """Write the WAV file (once) and return its path."""
        if self.closed:
            return self.path
        self.closed = True
        total = max(self._up.cursor, self._down.cursor)
        audio = np.zeros((total, 2), dtype=np.int16)
        for channel, track in enumerate((self._up, self._down)):
            for start, pcm in track.chunks:
                audio[start : start + len(pcm), channel] = pcm
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(self.path, audio, RATE, subtype="PCM_16", format="WAV")
        except (OSError, RuntimeError, soundfile.LibsndfileError) as exc:
            raise SimulatorError(f"cannot write recording {self.path}: {exc}") from None
        return self.path

    def __enter__(self) -> ConversationRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
