"""Real-time pacing of downlink audio (TTS) so the device's 40-frame queue never overflows or runs dry.

The device starts playing when the first frame arrives; from then on it consumes one frame per
``frame_ms``. We keep a virtual play position: ``buffered_until`` is the moment the device will have
played everything sent so far. A frame is sent when the device holds no more than ``prebuffer`` frames
(so the first ``prebuffer`` frames go at once). If the sender stalls (slow TTS) and the device runs dry,
the clock is re-anchored at "now" and the prebuffer is refilled. ``tts stop`` must wait for
``remaining()`` — sending it earlier cuts the tail, because the firmware flushes on the state change.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class AudioPacer:
    def __init__(self, frame_ms: int = 60, prebuffer: int = 3, clock: Callable[[], float] = time.monotonic) -> None:
        if frame_ms <= 0 or prebuffer < 0:
            raise ValueError("frame_ms must be > 0 and prebuffer >= 0")
        self.frame_s = frame_ms / 1000
        self.prebuffer = prebuffer
        self.clock = clock
        self._buffered_until: float | None = None
        self.sent = 0
        self.underruns = 0

    def reset(self) -> None:
        """A new utterance (or an abort): the device's queue is empty again."""
        self._buffered_until = None
        self.sent = 0

    def delay(self) -> float:
        """Seconds to wait before the next frame may be sent (0 = now)."""
        now = self.clock()
        if self._buffered_until is None:
            return 0.0
        if self._buffered_until < now:
            return 0.0
        return max(0.0, self._buffered_until - self.prebuffer * self.frame_s - now)

    def mark_sent(self, frames: int = 1) -> None:
        now = self.clock()
        if self._buffered_until is None or self._buffered_until < now:
            if self._buffered_until is not None:
                self.underruns += 1
            self._buffered_until = now  # the device starts (again) playing from now
        self._buffered_until += frames * self.frame_s
        self.sent += frames

    async def wait_turn(self) -> None:
        pause = self.delay()
        if pause > 0:
            await asyncio.sleep(pause)

    def remaining(self) -> float:
        """Seconds of audio the device still has queued (what ``tts stop`` must wait for)."""
        if self._buffered_until is None:
            return 0.0
        return max(0.0, self._buffered_until - self.clock())

    def queued_frames(self) -> float:
        return self.remaining() / self.frame_s
