"""Playing PCM through sounddevice. PortAudio's thread only reads the buffer and advances a position;
the GUI polls ``position`` from its timer. No output device is a normal state, not an error dialog."""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import numpy as np

from console.domain.audio import Clip

log = logging.getLogger(__name__)


class NoOutputDevice(Exception):
    """There is no sound output here (no sound card, no PulseAudio); saving and URLs still work."""


def _sounddevice() -> Any:
    try:
        import sounddevice
    except OSError as exc:  # libportaudio missing
        raise NoOutputDevice(f"sound is unavailable: {' '.join(str(exc).split())}") from None
    return sounddevice


def output_devices() -> list[str]:
    try:
        sd = _sounddevice()
        return [d["name"] for d in sd.query_devices() if d["max_output_channels"] > 0]
    except NoOutputDevice:
        return []
    except Exception:
        return []


_open_streams: set[Any] = set()  # PortAudio streams this process's players hold open
_streams_lock = threading.Lock()


def stream_opened(stream: Any) -> None:
    with _streams_lock:
        _open_streams.add(stream)


def stream_closed(stream: Any) -> None:
    with _streams_lock:
        _open_streams.discard(stream)


def refresh_devices() -> bool:
    """PortAudio reads the device list once; re-read it (a headset plugged in, PULSE_SERVER changed).

    Only while no player holds a stream open: re-initialising PortAudio under an open stream crashes the process
    (seen: a segfault in Pa_Terminate). Returns whether the list was re-read.
    """
    with _streams_lock:
        if _open_streams:
            return False
        with contextlib.suppress(Exception):
            sd = _sounddevice()
            sd._terminate()
            sd._initialize()
        return True


class AudioPlayer:
    def __init__(self) -> None:
        self._stream: Any = None
        self._clip: Clip | None = None
        self._pos = 0
        self._lock = threading.Lock()
        self.playing = False
        self.finished = False

    @property
    def position_s(self) -> float:
        clip = self._clip
        return 0.0 if clip is None else self._pos / clip.rate

    @property
    def duration_s(self) -> float:
        return 0.0 if self._clip is None else self._clip.seconds

    @property
    def loaded(self) -> Clip | None:
        return self._clip

    def play(self, clip: Clip, start_s: float = 0.0) -> None:
        """Start playing ``clip`` from ``start_s``; raises NoOutputDevice when nothing can play."""
        self.stop()
        sd = _sounddevice()
        try:
            if not any(d["max_output_channels"] > 0 for d in sd.query_devices()):
                raise NoOutputDevice("no sound output device on this machine")
            stream = sd.OutputStream(
                samplerate=clip.rate, channels=1, dtype="int16", callback=self._callback, blocksize=clip.rate // 50
            )
            self._clip, self._pos = clip, min(len(clip.pcm), int(start_s * clip.rate))
            self.finished = False
            stream.start()
        except sd.PortAudioError as exc:
            self._clip = None
            raise NoOutputDevice(f"cannot play: {' '.join(str(exc).split())}") from None
        self._stream = stream
        stream_opened(stream)
        self.playing = True

    def _callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        clip = self._clip
        if clip is None or not self.playing:
            outdata.fill(0)
            return
        chunk = clip.pcm[self._pos : self._pos + frames]
        outdata[: len(chunk), 0] = chunk
        outdata[len(chunk) :, 0] = 0
        self._pos += len(chunk)
        if len(chunk) < frames:
            self.playing = False
            self.finished = True

    def pause(self) -> None:
        self.playing = False

    def resume(self) -> None:
        if self._stream is not None and self._clip is not None and self._pos < len(self._clip.pcm):
            self.playing = True

    def seek(self, seconds: float) -> None:
        if self._clip is not None:
            self._pos = max(0, min(len(self._clip.pcm), int(seconds * self._clip.rate)))

    def stop(self) -> None:
        self.playing = False
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.stop()
            with contextlib.suppress(Exception):
                stream.close()
            stream_closed(stream)
