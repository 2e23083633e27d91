"""packet_samples / packets_duration_ms: TOC-based opus framing (RFC 6716 section 3.1)."""

from __future__ import annotations

import opuslib_next
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opuslib_next.api import decoder as opus_api

from server.audio.opus_packets import InvalidOpusPacket, packet_samples, packets_duration_ms
from tests.support.audio import encode_opus


@pytest.mark.parametrize(
    ("rate", "frame_ms"), [(16000, 60), (16000, 20), (24000, 60), (24000, 20), (16000, 10), (48000, 40)]
)
def test_real_encoder_packets(rate: int, frame_ms: int) -> None:
    packets = encode_opus(rate, frame_ms, 1.2)
    decoder = opuslib_next.Decoder(rate, 1)
    for packet in packets:
        assert packet_samples(packet) == frame_ms * 48
        assert packet_samples(packet, rate) == rate * frame_ms // 1000
        # The real decoder produces exactly that many samples.
        pcm = decoder.decode(packet, 5760)
        assert len(pcm) // 2 == packet_samples(packet, rate)
    assert packets_duration_ms(packets) == len(packets) * frame_ms


def test_device_frame_is_960_samples_at_16k() -> None:
    packet = encode_opus(16000, 60, 0.06)[0]
    assert packet_samples(packet, 16000) == 960
    assert packet_samples(packet, 24000) == 1440


# (TOC config, frame size in 48 kHz samples), RFC 6716 table 2.
# fmt: off
_FRAME_TABLE = [
    (0, 480), (1, 960), (2, 1920), (3, 2880),  # SILK NB
    (4, 480), (7, 2880),  # SILK MB
    (8, 480), (11, 2880),  # SILK WB
    (12, 480), (13, 960), (14, 480), (15, 960),  # Hybrid
    (16, 120), (17, 240), (18, 480), (19, 960),  # CELT NB
    (28, 120), (31, 960),  # CELT FB
]
# fmt: on


@pytest.mark.parametrize(("config", "samples_48k"), _FRAME_TABLE)
def test_frame_size_table(config: int, samples_48k: int) -> None:
    for stereo in (0, 4):
        toc = (config << 3) | stereo
        assert packet_samples(bytes([toc])) == samples_48k  # code 0: one frame
        assert packet_samples(bytes([toc | 1, 0, 0])) == 2 * samples_48k  # code 1: two equal frames
        assert packet_samples(bytes([toc | 2, 1, 0, 0])) == 2 * samples_48k  # code 2: two frames


def test_code3_frame_count() -> None:
    toc = (16 << 3) | 3  # CELT 2.5 ms
    assert packet_samples(bytes([toc, 1])) == 120
    assert packet_samples(bytes([toc, 48])) == 48 * 120  # exactly 120 ms is allowed
    assert packet_samples(bytes([toc, 0xC0 | 5])) == 5 * 120  # VBR/padding flags are not the count
    assert packet_samples(bytes([(3 << 3) | 3, 2])) == 5760  # 2 x 60 ms


def test_sample_rate_scaling() -> None:
    packet = bytes([(16 << 3)])  # 2.5 ms
    assert packet_samples(packet, 8000) == 20
    assert packet_samples(packet, 16000) == 40
    assert packet_samples(packet, 48000) == 120
    with pytest.raises(ValueError, match="sample_rate"):
        packet_samples(packet, 0)


def test_invalid_packets() -> None:
    with pytest.raises(InvalidOpusPacket, match="empty"):
        packet_samples(b"")
    with pytest.raises(InvalidOpusPacket, match="count byte"):
        packet_samples(bytes([(1 << 3) | 3]))
    with pytest.raises(InvalidOpusPacket, match="0 frames"):
        packet_samples(bytes([(1 << 3) | 3, 0]))
    with pytest.raises(InvalidOpusPacket, match="120 ms"):
        packet_samples(bytes([(3 << 3) | 3, 3]))  # 3 x 60 ms
    with pytest.raises(InvalidOpusPacket, match="120 ms"):
        packet_samples(bytes([(16 << 3) | 3, 49]))  # 49 x 2.5 ms
    with pytest.raises(InvalidOpusPacket):
        packets_duration_ms([bytes([8]), b""])
    assert issubclass(InvalidOpusPacket, ValueError)


def test_packets_duration_ms_rounds() -> None:
    assert packets_duration_ms([]) == 0
    assert packets_duration_ms([bytes([16 << 3])]) == 3  # 2.5 ms rounds half up
    assert packets_duration_ms([bytes([16 << 3])] * 2) == 5
    assert packets_duration_ms([bytes([3 << 3])] * 167) == 10_020


def _libopus_samples(packet: bytes) -> int | None:
    """Reference: libopus' own framing functions (None where libopus reports an error)."""
    try:
        frames = opus_api.packet_get_nb_frames(packet)
    except opuslib_next.OpusError:
        return None
    return frames * opus_api.packet_get_samples_per_frame(packet, 48000)


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=0, max_size=8), st.sampled_from([8000, 12000, 16000, 24000, 48000]))
def test_property_int_in_range_or_invalid(packet: bytes, rate: int) -> None:
    try:
        result = packet_samples(packet, rate)
    except InvalidOpusPacket:
        reference = _libopus_samples(packet) if packet else None
        # libopus rejects the same packets, except that it reports 0 samples for a zero count.
        assert reference is None or reference == 0 or reference > 5760
        return
    assert type(result) is int
    assert rate * 25 // 10_000 <= result <= rate * 120 // 1000
    assert result * 48000 // rate == _libopus_samples(packet)


@given(st.integers(0, 255), st.integers(0, 255))
def test_property_every_toc_byte(toc: int, second: int) -> None:
    code = toc & 3
    try:
        result = packet_samples(bytes([toc, second]))
    except InvalidOpusPacket:
        assert code == 3
        assert (second & 0x3F) == 0 or (second & 0x3F) * packet_samples(bytes([toc & ~3])) > 5760
        return
    assert 120 <= result <= 5760
    assert result % 120 == 0
