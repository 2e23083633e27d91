"""Jitter as the device measures it (after the server's opening burst) and the per-run summary figures."""

from __future__ import annotations

import math

import pytest

from simulator.metrics import percentile, summarize, turn_line
from simulator.playback import PlaybackQueue
from simulator.turns import TurnBuilder, TurnReport


class FakeClock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def test_the_opening_burst_is_not_jitter_but_late_and_early_frames_are() -> None:
    clock = FakeClock()
    queue = PlaybackQueue(clock=clock)
    for _ in range(4):  # a paced server's prebuffer: back to back
        queue.push(b"x")
    for gap in (0.060, 0.062, 0.055, 0.090):
        clock.now += gap
        queue.push(b"x")
    assert queue.stats.jitter_ms == pytest.approx([0.0, 2.0, 5.0, 30.0])


def test_jitter_restarts_with_each_reply() -> None:
    clock = FakeClock()
    queue = PlaybackQueue(clock=clock)
    queue.push(b"x")
    clock.now += 0.2
    queue.push(b"x")
    assert queue.stats.jitter_ms == pytest.approx([140.0])
    queue.reset()
    queue.push(b"x")
    assert queue.stats.jitter_ms == []


def report(**kw: object) -> TurnReport:
    values = {"received": 10, "played": 10, "dropped": 0, "late": 0, "clipped": 0, "latency": 0.5,
              "jitter": (1.0, 3.0), "ended_by": "tts_stop", "aborted_at": None}  # fmt: skip
    values.update(kw)
    stats = PlaybackQueue().stats
    stats.received, stats.played = values["received"], values["played"]  # type: ignore[assignment]
    stats.dropped, stats.late, stats.clipped = values["dropped"], values["late"], values["clipped"]  # type: ignore[assignment]
    stats.first_frame_latency_s = values["latency"]  # type: ignore[assignment]
    stats.jitter_ms = list(values["jitter"])  # type: ignore[call-overload]
    builder = TurnBuilder(started_at=1.0, aborted_at=values["aborted_at"])  # type: ignore[arg-type]
    return builder.finish(stats, 2.0, values["ended_by"])  # type: ignore[arg-type]


def test_summary_counts_clipped_endings_but_not_the_users_own_interruptions() -> None:
    summary = summarize([
        report(),
        report(clipped=3, received=12, played=9, latency=1.5),
        report(clipped=20, aborted_at=1.5, latency=None, jitter=()),
        report(dropped=2, late=1, latency=0.25),
    ])  # fmt: skip
    assert summary.turns == 4 and summary.with_audio == 4 and summary.aborted == 1
    assert summary.clipped == 23 and summary.clipped_turns == 1
    assert summary.dropped == 2 and summary.late == 1
    assert summary.first_audio_ms == pytest.approx([500, 1500, 250])
    lines = summary.lines()
    assert lines[0] == "replies: 4 (4 with audio, 1 interrupted)"
    assert lines[1].startswith("end of speech → first audio: p50 500 ms, p90 1300 ms") and "(3 measured)" in lines[1]
    assert "2 dropped (queue full), 1 late" in lines[3] and "(1 replies with a clipped ending)" in lines[3]


def test_percentile_and_one_line_per_turn() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile([5], 99) == 5
    assert math.isnan(percentile([], 50))
    line = turn_line(report(latency=0.812, clipped=2))
    assert line == "· first audio 812 ms, 10 frames, jitter p99 3.0 ms, 0 dropped, 0 late, 2 clipped"
    assert "interrupted" in turn_line(report(aborted_at=1.5))
