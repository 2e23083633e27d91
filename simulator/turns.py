"""One dialogue turn as the device experienced it: what it heard, what it played, and how well."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from simulator.mcp_tools import ToolCallRecord
from simulator.playback import PlaybackStats

__all__ = ["TurnEnd", "TurnReport"]

# tts_stop: the server ended it; listen: the device started listening over it (abort + listen start);
# disconnect: the channel closed mid-reply; superseded: the server started a new reply without stopping this one.
TurnEnd = Literal["tts_stop", "listen", "disconnect", "superseded"]


@dataclass(frozen=True, slots=True)
class TurnReport:
    stt: str | None
    emotion: str | None
    sentences: tuple[str, ...]
    tool_calls: tuple[ToolCallRecord, ...]
    frames_received: int
    frames_played: int
    dropped: int
    late: int
    clipped: int
    max_depth: int
    gap_s: float
    first_frame_latency_s: float | None  # end of the user's speech / text → first audio frame received
    started_at: float  # tts start, on the client's monotonic clock
    ended_at: float
    ended_by: TurnEnd
    aborted: bool
    abort_to_stop_s: float | None  # abort sent → tts stop received
    jitter_ms: tuple[float, ...] = ()  # per frame |inter-arrival − frame duration|, after the opening burst

    @property
    def clean(self) -> bool:
        """Every frame played, nothing dropped, the tail not cut off, ended by the server."""
        return (
            self.ended_by == "tts_stop" and not self.aborted and self.dropped == 0 and self.clipped == 0
            and self.frames_played == self.frames_received
        )  # fmt: skip

    @property
    def duration_s(self) -> float:
        return self.ended_at - self.started_at


@dataclass
class TurnBuilder:
    """Collects a turn while it happens; ``stt``/``emotion`` may arrive before ``tts start``."""

    stt: str | None = None
    emotion: str | None = None
    sentences: list[str] = field(default_factory=list)
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    started_at: float | None = None
    aborted_at: float | None = None

    def finish(self, stats: PlaybackStats, now: float, ended_by: TurnEnd) -> TurnReport:
        aborted = self.aborted_at is not None or ended_by in ("listen", "disconnect")
        return TurnReport(
            stt=self.stt,
            emotion=self.emotion,
            sentences=tuple(self.sentences),
            tool_calls=tuple(self.tool_calls),
            frames_received=stats.received,
            frames_played=stats.played,
            dropped=stats.dropped,
            late=stats.late,
            clipped=stats.clipped,
            max_depth=stats.max_depth,
            gap_s=stats.gap_s,
            first_frame_latency_s=stats.first_frame_latency_s,
            started_at=self.started_at if self.started_at is not None else now,
            ended_at=now,
            ended_by=ended_by,
            aborted=aborted,
            abort_to_stop_s=now - self.aborted_at if self.aborted_at is not None and ended_by == "tts_stop" else None,
            jitter_ms=tuple(stats.jitter_ms),
        )
