"""AudioCollector: per-connection, per-turn buffering of user and TTS opus packets."""

from __future__ import annotations

import dataclasses

import pytest

from server.audio.collector import AudioCollector, CollectedAudio
from server.audio.ogg_opus import build_ogg_opus, read_ogg_opus_packets
from tests.support.audio import encode_opus


def _encode(rate: int, frame_ms: int, n_frames: int) -> list[bytes]:
    return encode_opus(rate, frame_ms, n_frames * frame_ms / 1000)


@pytest.fixture(scope="module")
def user_packets() -> list[bytes]:
    return _encode(16000, 60, 40)


@pytest.fixture(scope="module")
def tts_packets() -> list[bytes]:
    return _encode(24000, 60, 40)


def test_user_turn_keeps_order_and_metadata(user_packets: list[bytes]) -> None:
    collector = AudioCollector()
    for packet in user_packets[:10]:
        collector.add_user(packet)
    assert collector.user_duration_ms == 600

    clip = collector.take_user()
    assert clip == CollectedAudio(
        packets=tuple(user_packets[:10]),
        sample_rate=16000,
        channels=1,
        duration_ms=600,
        truncated=False,
        source="user",
    )
    assert collector.user_duration_ms == 0
    assert collector.take_user() is None  # new, empty turn


def test_tts_turn(tts_packets: list[bytes]) -> None:
    collector = AudioCollector()
    for packet in tts_packets[:5]:
        collector.add_tts(packet)
    assert collector.tts_duration_ms == 300
    clip = collector.take_tts()
    assert clip is not None
    assert clip.source == "tts"
    assert clip.sample_rate == 24000
    assert clip.packets == tuple(tts_packets[:5])
    assert clip.duration_ms == 300


def test_turns_are_separated(user_packets: list[bytes], tts_packets: list[bytes]) -> None:
    collector = AudioCollector()
    for packet in user_packets[:3]:
        collector.add_user(packet)
    first = collector.take_user()
    for packet in user_packets[3:7]:
        collector.add_user(packet)
        collector.add_tts(tts_packets[0])  # interleaved TTS does not leak into the user turn
    second = collector.take_user()
    assert first is not None and second is not None
    assert first.packets == tuple(user_packets[:3])
    assert second.packets == tuple(user_packets[3:7])
    tts = collector.take_tts()
    assert tts is not None and tts.packets == (tts_packets[0],) * 4


def test_taken_clip_is_independent_of_later_packets(user_packets: list[bytes]) -> None:
    collector = AudioCollector()
    collector.add_user(user_packets[0])
    clip = collector.take_user()
    collector.add_user(user_packets[1])
    assert clip is not None and clip.packets == (user_packets[0],)
    with pytest.raises(dataclasses.FrozenInstanceError):
        clip.duration_ms = 0  # type: ignore[misc]


def test_truncation_at_max_turn_ms(user_packets: list[bytes]) -> None:
    collector = AudioCollector(max_turn_ms=600)
    for packet in user_packets[:15]:
        collector.add_user(packet)
    assert collector.user_duration_ms == 600
    clip = collector.take_user()
    assert clip is not None
    assert clip.truncated
    assert clip.packets == tuple(user_packets[:10])  # the first 600 ms are kept, the rest dropped
    assert clip.duration_ms == 600

    # The next turn starts fresh.
    collector.add_user(user_packets[20])
    clip = collector.take_user()
    assert clip is not None and not clip.truncated and clip.packets == (user_packets[20],)


def test_exactly_max_turn_is_not_truncated(user_packets: list[bytes]) -> None:
    collector = AudioCollector(max_turn_ms=600)
    for packet in user_packets[:10]:
        collector.add_user(packet)
    clip = collector.take_user()
    assert clip is not None and not clip.truncated and len(clip.packets) == 10


def test_truncation_is_per_source(user_packets: list[bytes], tts_packets: list[bytes]) -> None:
    collector = AudioCollector(max_turn_ms=120)
    for packet in user_packets[:5]:
        collector.add_user(packet)
    collector.add_tts(tts_packets[0])
    tts = collector.take_tts()
    assert tts is not None and not tts.truncated
    user = collector.take_user()
    assert user is not None and user.truncated and user.duration_ms == 120


@pytest.mark.parametrize("bad", [b"", bytes([0x0B]), bytes([0x0B, 0x00]), bytes([0x1B, 0x03]), None, 7])
def test_invalid_packets_are_counted_not_kept(user_packets: list[bytes], bad: object) -> None:
    collector = AudioCollector()
    collector.add_user(user_packets[0])
    collector.add_user(bad)  # type: ignore[arg-type]
    collector.add_tts(bad)  # type: ignore[arg-type]
    collector.add_user(user_packets[1])
    assert collector.invalid_packets == 2
    clip = collector.take_user()
    assert clip is not None and clip.packets == tuple(user_packets[:2])
    assert collector.take_tts() is None


def test_only_invalid_packets_gives_no_clip() -> None:
    collector = AudioCollector()
    collector.add_user(b"")
    assert collector.take_user() is None
    assert collector.invalid_packets == 1


def test_disabled_sources_return_none(user_packets: list[bytes], tts_packets: list[bytes]) -> None:
    collector = AudioCollector(enabled_user=False)
    collector.add_user(user_packets[0])
    collector.add_tts(tts_packets[0])
    assert collector.user_duration_ms == 0
    assert collector.take_user() is None
    assert collector.take_tts() is not None

    collector = AudioCollector(enabled_tts=False)
    collector.add_user(user_packets[0])
    collector.add_tts(tts_packets[0])
    assert collector.take_tts() is None
    assert collector.take_user() is not None


def test_discard_user_and_clear(user_packets: list[bytes], tts_packets: list[bytes]) -> None:
    collector = AudioCollector(max_turn_ms=60)
    collector.add_user(user_packets[0])
    collector.add_user(user_packets[1])  # truncated
    collector.add_tts(tts_packets[0])
    collector.discard_user()
    assert collector.user_duration_ms == 0
    assert collector.take_user() is None
    collector.add_user(user_packets[2])
    clip = collector.take_user()
    assert clip is not None and not clip.truncated  # the discarded turn's truncation is gone
    assert collector.tts_duration_ms == 60  # discard_user leaves the TTS turn alone

    collector.add_user(user_packets[3])
    collector.clear()
    assert collector.take_user() is None
    assert collector.take_tts() is None


def test_mixed_frame_durations() -> None:
    collector = AudioCollector()
    for packet in _encode(16000, 20, 5) + _encode(16000, 60, 2):
        collector.add_user(packet)
    assert collector.user_duration_ms == 220
    clip = collector.take_user()
    assert clip is not None and clip.duration_ms == 220


def test_stereo_channels_recorded() -> None:
    collector = AudioCollector(channels=2, user_sample_rate=48000)
    collector.add_user(bytes([(3 << 3) | 4, 0]))  # a stereo 60 ms SILK TOC
    clip = collector.take_user()
    assert clip is not None and (clip.channels, clip.sample_rate) == (2, 48000)


def test_default_five_minute_limit(user_packets: list[bytes]) -> None:
    # 5 minutes of 60 ms frames fit exactly; the running sample count stays exact over 5000 packets.
    collector = AudioCollector()
    for i in range(5000):
        collector.add_user(user_packets[i % len(user_packets)])
    assert collector.user_duration_ms == 300_000
    collector.add_user(user_packets[0])
    clip = collector.take_user()
    assert clip is not None and clip.truncated and len(clip.packets) == 5000


def test_collected_clip_builds_ogg(user_packets: list[bytes]) -> None:
    collector = AudioCollector()
    for packet in user_packets[:20]:
        collector.add_user(packet)
    clip = collector.take_user()
    assert clip is not None
    ogg = build_ogg_opus(clip.packets, input_sample_rate=clip.sample_rate, channels=clip.channels)
    assert ogg.duration_ms == clip.duration_ms == 1200
    assert read_ogg_opus_packets(ogg.data) == (list(clip.packets), 16000, 1)


@pytest.mark.parametrize(
    "kwargs", [{"max_turn_ms": 0}, {"channels": 3}, {"user_sample_rate": 0}, {"tts_sample_rate": -1}]
)
def test_bad_configuration(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        AudioCollector(**kwargs)
