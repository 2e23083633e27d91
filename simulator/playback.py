"""The device's speaker side: a bounded packet queue played in real time, with the faults a listener hears.

The firmware pushes every downlink opus packet into a decode queue that holds at most 40 packets
(2400 ms / 60 ms) and drops what does not fit; playback consumes one packet per frame duration; a
``tts stop`` (a state change) flushes whatever is still queued (protocol.md §1.5).  A server therefore
has to pace its audio.  :class:`PlaybackQueue` models exactly that, plus the small jitter buffer any
real player keeps, and counts what went wrong:

* ``dropped``: arrived while 40 packets were queued (the server sent too fast);
* ``late``: arrived after the player had run dry, i.e. an audible gap (the server sent too slowly);
* ``clipped``: still queued when ``tts stop`` came (the server stopped before the tail had played);
* ``jitter_ms``: per frame, |inter-arrival time − frame duration|, after the utterance's opening burst
  (a paced server sends its prebuffer back to back, which is not jitter).

Time is read from an injectable monotonic clock and the queue is advanced lazily whenever it is touched,
so accounting is exact whatever the caller's polling rate, and tests can run it on a fake clock.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["MAX_QUEUED_FRAMES", "PlaybackQueue", "PlaybackStats"]

MAX_QUEUED_FRAMES = 40  # firmware: MAX_DECODE_PACKETS_IN_QUEUE = 2400 / OPUS_FRAME_DURATION_MS


@dataclass
class PlaybackStats:
    """Counters for one utterance (from ``tts start`` to ``tts stop``)."""

    received: int = 0
    played: int = 0
    dropped: int = 0
    late: int = 0
    clipped: int = 0
    max_depth: int = 0
    gap_s: float = 0.0  # silence heard because the queue had run dry
    first_frame_at: float | None = None
    playing_since: float | None = None  # when the first frame started to sound
    first_frame_latency_s: float | None = None  # end of the user's speech → first frame received
    jitter_ms: list[float] = field(default_factory=list)  # |inter-arrival − frame| after the opening burst
    last_arrival: float | None = None
    in_burst: bool = True  # still inside the opening burst (frames arriving back to back)


class PlaybackQueue:
    def __init__(
        self,
        frame_ms: int = 60,
        jitter_frames: int = 3,
        max_frames: int = MAX_QUEUED_FRAMES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if frame_ms <= 0:
            raise ValueError(f"frame_ms must be positive, got {frame_ms}")
        if not 2 <= jitter_frames <= 4:
            # Fewer plays every network hiccup as a gap; more adds latency the firmware does not have.
            raise ValueError(f"jitter_frames must be 2-4, got {jitter_frames}")
        if max_frames < jitter_frames:
            raise ValueError(f"max_frames ({max_frames}) must hold the jitter buffer ({jitter_frames})")
        self.frame_s = frame_ms / 1000
        self.jitter_frames = jitter_frames
        self.max_frames = max_frames
        self.clock = clock
        self.stats = PlaybackStats()
        self._queue: deque[bytes] = deque()
        self._played: list[bytes] = []
        self._next_due: float | None = None  # when the next frame must start; None = buffering
        self._buffering_since: float | None = None  # arrival of the first frame of the current fill
        self._ran_dry_at: float | None = None  # the player needed a frame at this time and had none
        self._end_of_speech: float | None = None

    # ---- setup ------------------------------------------------------------------------------------

    def set_frame_ms(self, frame_ms: int) -> None:
        """Downlink frame duration from the server hello (the firmware plays what the server announces)."""
        if frame_ms <= 0:
            raise ValueError(f"frame_ms must be positive, got {frame_ms}")
        self.frame_s = frame_ms / 1000

    def mark_end_of_speech(self, at: float | None = None) -> None:
        """The user finished speaking (or sent text): the next first frame measures response latency."""
        self._end_of_speech = self.clock() if at is None else at

    def reset(self) -> None:
        """``tts start``: the firmware resets its decoder and queue for a new utterance.

        The end-of-speech mark survives: it was set before the server answered with this ``tts start``.
        """
        self._queue.clear()
        self._played.clear()
        self._next_due = None
        self._buffering_since = None
        self._ran_dry_at = None
        self.stats = PlaybackStats()

    # ---- the stream ---------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Packets received and not yet played, as of the last time the queue was touched."""
        return len(self._queue)

    @property
    def playing(self) -> bool:
        return self._next_due is not None

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing waiting to be collected by :meth:`poll`."""
        return not self._queue and not self._played

    def push(self, packet: bytes) -> bool:
        """A packet arrived. Returns False if it was dropped because the queue was full."""
        now = self.clock()
        self._advance(now)
        stats = self.stats
        stats.received += 1
        if stats.last_arrival is not None:
            gap = now - stats.last_arrival
            # Frames arriving back to back at the start are the server's prebuffer, sent at once on purpose.
            if not (stats.in_burst and gap < self.frame_s / 4):
                stats.in_burst = False
                stats.jitter_ms.append(abs(gap - self.frame_s) * 1000)
        stats.last_arrival = now
        if stats.first_frame_at is None:
            stats.first_frame_at = now
            if self._end_of_speech is not None:
                stats.first_frame_latency_s = now - self._end_of_speech
                self._end_of_speech = None  # one measurement per user input
        if len(self._queue) >= self.max_frames:
            stats.dropped += 1
            return False
        if self._ran_dry_at is not None:
            # Playback had started and the player already wanted this frame: a gap was heard.
            stats.late += 1
            stats.gap_s += now - self._ran_dry_at
            self._ran_dry_at = None
        self._queue.append(packet)
        stats.max_depth = max(stats.max_depth, len(self._queue))
        if self._next_due is None:
            if self._buffering_since is None:
                self._buffering_since = now
            if len(self._queue) >= self.jitter_frames:
                self._start(now)
        return True

    def poll(self) -> list[bytes]:
        """Advance to now and return the packets that started playing since the last call, in order."""
        self._advance(self.clock())
        played, self._played = self._played, []
        return played

    def flush(self) -> int:
        """``tts stop`` (or any state change out of speaking): drop what has not played yet.

        Returns the number of packets cut off (also added to ``stats.clipped``); call :meth:`poll`
        afterwards to collect the packets that did play up to now.
        """
        self._advance(self.clock())
        clipped = len(self._queue)
        self.stats.clipped += clipped
        self._queue.clear()
        self._next_due = None
        self._buffering_since = None
        self._ran_dry_at = None
        return clipped

    # ---- internals ----------------------------------------------------------------------------------

    def _start(self, at: float) -> None:
        self._next_due = at
        self._buffering_since = None
        if self.stats.playing_since is None:
            self.stats.playing_since = at

    def _advance(self, now: float) -> None:
        if self._next_due is None and self._queue and self._buffering_since is not None:
            # A short tail never fills the jitter buffer: play it once the buffer's time is up anyway.
            deadline = self._buffering_since + self.jitter_frames * self.frame_s
            if now >= deadline:
                self._start(deadline)
        if self._next_due is None:
            return
        while self._queue and self._next_due <= now:
            self._played.append(self._queue.popleft())
            self.stats.played += 1
            self._next_due += self.frame_s
        if not self._queue and self._next_due <= now:
            # The last frame has finished and nothing followed: either the end of the speech or an
            # underrun; a frame arriving later tells which, and refills the jitter buffer first.
            self._ran_dry_at = self._next_due
            self._next_due = None
