"""What a device owner cares about, over one or many replies: end of speech → first audio, jitter, frames
dropped (queue full) or late (the player ran dry), and clipped endings (audio still queued when
``tts stop`` arrived).  Pure functions over :class:`~simulator.turns.TurnReport`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from simulator.turns import TurnReport

__all__ = ["Summary", "percentile", "summarize", "turn_line"]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


@dataclass
class Summary:
    turns: int = 0
    with_audio: int = 0
    first_audio_ms: list[float] = field(default_factory=list)
    jitter_ms: list[float] = field(default_factory=list)
    frames_received: int = 0
    frames_played: int = 0
    dropped: int = 0
    late: int = 0
    clipped: int = 0
    clipped_turns: int = 0
    aborted: int = 0
    gap_s: float = 0.0

    def add(self, report: TurnReport) -> None:
        self.turns += 1
        self.with_audio += report.frames_received > 0
        if report.first_frame_latency_s is not None:
            self.first_audio_ms.append(report.first_frame_latency_s * 1000)
        self.jitter_ms.extend(report.jitter_ms)
        self.frames_received += report.frames_received
        self.frames_played += report.frames_played
        self.dropped += report.dropped
        self.late += report.late
        self.clipped += report.clipped
        # An ending the user cut off themselves (abort, barge-in) is not the server's clipping.
        self.clipped_turns += report.clipped > 0 and not report.aborted
        self.aborted += report.aborted
        self.gap_s += report.gap_s

    def lines(self) -> list[str]:
        fa, jit = self.first_audio_ms, self.jitter_ms
        return [
            f"replies: {self.turns} ({self.with_audio} with audio, {self.aborted} interrupted)",
            f"end of speech → first audio: p50 {_ms(percentile(fa, 50))}, p90 {_ms(percentile(fa, 90))}, "
            f"p99 {_ms(percentile(fa, 99))}, max {_ms(max(fa, default=math.nan))} ({len(fa)} measured)",
            f"jitter: p50 {_ms(percentile(jit, 50))}, p99 {_ms(percentile(jit, 99))}, "
            f"max {_ms(max(jit, default=math.nan))}",
            f"frames: {self.frames_received} received, {self.frames_played} played, {self.dropped} dropped "
            f"(queue full), {self.late} late ({self.gap_s:.2f} s of gaps), {self.clipped} clipped "
            f"({self.clipped_turns} replies with a clipped ending)",
        ]


def summarize(reports: Iterable[TurnReport]) -> Summary:
    summary = Summary()
    for report in reports:
        summary.add(report)
    return summary


def turn_line(report: TurnReport) -> str:
    """One line per reply for the terminal."""
    parts = []
    if report.first_frame_latency_s is not None:
        parts.append(f"first audio {report.first_frame_latency_s * 1000:.0f} ms")
    parts.append(f"{report.frames_received} frames")
    if report.jitter_ms:
        parts.append(f"jitter p99 {_ms(percentile(report.jitter_ms, 99))}")
    parts.append(f"{report.dropped} dropped, {report.late} late, {report.clipped} clipped")
    if report.aborted:
        parts.append("interrupted" + (f", stop after {report.abort_to_stop_s * 1000:.0f} ms" if
                                      report.abort_to_stop_s is not None else ""))  # fmt: skip
    elif report.ended_by != "tts_stop":
        parts.append(f"ended by {report.ended_by}")
    return "· " + ", ".join(parts)
