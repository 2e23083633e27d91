"""The simulated device's speaker queue on a fake clock: drops over 40, late frames, clipped endings."""

from __future__ import annotations

import pytest

from simulator.playback import PlaybackQueue

FRAME = 0.06


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def packets(n: int, start: int = 0) -> list[bytes]:
    return [bytes([i % 256]) * 3 for i in range(start, start + n)]


def test_more_than_40_queued_frames_are_dropped(clock: FakeClock) -> None:
    queue = PlaybackQueue(clock=clock)
    accepted = [queue.push(p) for p in packets(46)]
    # The first frame started playing (left the queue) as soon as the jitter buffer was full.
    assert accepted == [True] * 41 + [False] * 5
    assert queue.stats.dropped == 5 and queue.stats.received == 46 and queue.depth == 40
    assert queue.stats.max_depth == 40
    clock.advance(FRAME)
    assert queue.push(b"room again") and queue.stats.dropped == 5, "one frame played, one slot free"


def test_frames_play_in_real_time_once_the_jitter_buffer_is_full(clock: FakeClock) -> None:
    queue = PlaybackQueue(jitter_frames=3, clock=clock)
    sent = packets(10)
    queue.push(sent[0])
    queue.push(sent[1])
    clock.advance(0.05)
    assert queue.poll() == [] and not queue.playing, "two frames do not fill a 3-frame buffer"
    queue.push(sent[2])  # full: playback starts now
    assert queue.poll() == [sent[0]]
    clock.advance(FRAME * 2 + 0.001)
    assert queue.poll() == sent[1:3]
    assert queue.stats.playing_since == pytest.approx(100.05)


def test_a_short_tail_plays_when_the_buffer_time_is_up(clock: FakeClock) -> None:
    queue = PlaybackQueue(jitter_frames=3, clock=clock)
    queue.push(b"a")
    clock.advance(3 * FRAME - 0.001)
    assert queue.poll() == []
    clock.advance(0.002)
    assert queue.poll() == [b"a"]


def test_steadily_paced_frames_are_neither_late_nor_clipped(clock: FakeClock) -> None:
    queue = PlaybackQueue(clock=clock)
    for packet in packets(3):  # the server's prebuffer: sent at once
        queue.push(packet)
    for packet in packets(20, 3):  # then one per frame duration
        clock.advance(FRAME)
        queue.push(packet)
        queue.poll()
    clock.advance(3 * FRAME + 0.01)  # the server waits for the tail before tts stop
    assert queue.flush() == 0
    played = queue.poll()
    stats = queue.stats
    assert stats.played == 23 and stats.late == 0 and stats.clipped == 0 and stats.dropped == 0
    assert played, "poll after flush collects what played up to the stop"


def test_frames_arriving_after_the_queue_ran_dry_are_late(clock: FakeClock) -> None:
    queue = PlaybackQueue(jitter_frames=2, clock=clock)
    for packet in packets(2):
        queue.push(packet)
    clock.advance(0.5)  # both played by 0.12 s; the player has waited since then
    assert len(queue.poll()) == 2
    queue.push(b"x")
    assert queue.stats.late == 1
    assert queue.stats.gap_s == pytest.approx(0.5 - 2 * FRAME)
    queue.push(b"y")  # refills the jitter buffer: playing again, not late
    assert queue.stats.late == 1 and queue.playing


def test_late_counts_each_gap_without_polling(clock: FakeClock) -> None:
    """Accounting does not depend on how often the owner polls: push alone advances the clock."""
    queue = PlaybackQueue(jitter_frames=2, clock=clock)
    for _ in range(3):
        queue.push(b"a")
        queue.push(b"b")
        clock.advance(1.0)
    assert queue.stats.late == 2 and queue.stats.played == 4


def test_tts_stop_with_frames_still_queued_counts_a_clipped_ending(clock: FakeClock) -> None:
    queue = PlaybackQueue(clock=clock)
    for packet in packets(10):
        queue.push(packet)
    clock.advance(0.2)  # frames start at 0, .06, .12, .18 → 4 have started
    assert queue.flush() == 6
    assert queue.stats.clipped == 6 and queue.stats.played == 4
    assert len(queue.poll()) == 4 and queue.depth == 0


def test_reset_starts_a_new_utterance_but_keeps_the_end_of_speech_mark(clock: FakeClock) -> None:
    queue = PlaybackQueue(clock=clock)
    queue.push(b"old")
    queue.mark_end_of_speech()
    clock.advance(0.8)
    queue.reset()  # tts start
    assert queue.depth == 0 and queue.stats.received == 0
    clock.advance(0.4)
    queue.push(b"new")
    assert queue.stats.first_frame_latency_s == pytest.approx(1.2)
    queue.reset()
    queue.push(b"next")
    assert queue.stats.first_frame_latency_s is None, "one measurement per user input"


@pytest.mark.parametrize("jitter", [1, 5])
def test_jitter_buffer_is_2_to_4_frames(jitter: int) -> None:
    with pytest.raises(ValueError, match="2-4"):
        PlaybackQueue(jitter_frames=jitter)
