from __future__ import annotations

import itertools

import pytest

from server.audio.pacer import AudioPacer


class FakeClock:
    """A clock the test moves by hand, so pacing decisions are checked exactly (no sleeping)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def send_all(pacer: AudioPacer, clock: FakeClock, frames: int) -> list[float]:
    times = []
    for _ in range(frames):
        clock.now += pacer.delay()
        times.append(clock.now)
        pacer.mark_sent()
    return times


def test_prebuffer_goes_at_once_then_one_frame_per_duration() -> None:
    clock = FakeClock()
    pacer = AudioPacer(frame_ms=60, prebuffer=3, clock=clock)
    times = send_all(pacer, clock, 10)
    assert times[:4] == [100.0] * 4  # 3 frames of prebuffer plus the one the device starts with
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(times[3:])]
    assert gaps == [0.06] * 6


def test_device_queue_never_exceeds_prebuffer_plus_one() -> None:
    clock = FakeClock()
    pacer = AudioPacer(frame_ms=60, prebuffer=4, clock=clock)
    for _ in range(200):
        clock.now += pacer.delay()
        pacer.mark_sent()
        assert pacer.queued_frames() <= 5 + 1e-9 < 40


def test_stop_waits_for_the_tail_to_play() -> None:
    clock = FakeClock()
    pacer = AudioPacer(frame_ms=60, prebuffer=3, clock=clock)
    send_all(pacer, clock, 20)
    assert pacer.remaining() == pytest.approx(4 * 0.06)
    clock.now += pacer.remaining()
    assert pacer.remaining() == 0


def test_stall_reanchors_and_refills_the_prebuffer() -> None:
    clock = FakeClock()
    pacer = AudioPacer(frame_ms=60, prebuffer=2, clock=clock)
    send_all(pacer, clock, 5)
    clock.now += 2.0  # TTS was slow: the device ran dry
    times = send_all(pacer, clock, 4)
    assert pacer.underruns == 1
    assert times[:3] == [times[0]] * 3, "prebuffer refilled at once after the stall"
    assert times[3] - times[2] == pytest.approx(0.06)


def test_reset_starts_a_new_utterance() -> None:
    clock = FakeClock()
    pacer = AudioPacer(frame_ms=20, prebuffer=1, clock=clock)
    send_all(pacer, clock, 5)
    pacer.reset()
    assert pacer.delay() == 0 and pacer.remaining() == 0 and pacer.sent == 0


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        AudioPacer(frame_ms=0)
