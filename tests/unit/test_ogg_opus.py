"""build_ogg_opus / read_ogg_opus_packets: device opus packets -> standard Ogg Opus, no re-encode."""

from __future__ import annotations

import io
import struct

import av
import numpy as np
import pytest
import soundfile

from server.audio.ogg_opus import OPUS_PRE_SKIP, InvalidOpusPacket, OggOpus, build_ogg_opus, read_ogg_opus_packets
from tests.support.audio import encode_opus


def _opus_head(data: bytes) -> bytes:
    start = data.index(b"OpusHead")
    return data[start : start + 19]


def _pages(data: bytes) -> list[tuple[int, int, int]]:
    """(header type flags, granule position, packets completed on the page) for each Ogg page."""
    pages = []
    offset = 0
    while offset < len(data):
        assert data[offset : offset + 4] == b"OggS"
        flags = data[offset + 5]
        (granule,) = struct.unpack_from("<q", data, offset + 6)
        n_segments = data[offset + 26]
        lacing = data[offset + 27 : offset + 27 + n_segments]
        pages.append((flags, granule, sum(1 for value in lacing if value < 255)))
        offset += 27 + n_segments + sum(lacing)
    return pages


def _last_granule(data: bytes) -> tuple[int, int]:
    """(granule position, header type flags) of the last Ogg page."""
    flags, granule, _ = _pages(data)[-1]
    return granule, flags


@pytest.mark.parametrize(
    ("rate", "frame_ms", "seconds"), [(16000, 60, 3.0), (16000, 20, 2.0), (24000, 60, 3.0), (24000, 20, 2.0)]
)
def test_roundtrip_mono(rate: int, frame_ms: int, seconds: float) -> None:
    packets = encode_opus(rate, frame_ms, seconds)
    result = build_ogg_opus(packets, input_sample_rate=rate)

    assert isinstance(result, OggOpus)
    assert result.packet_count == len(packets)
    assert result.duration_ms == len(packets) * frame_ms
    assert result.data.startswith(b"OggS")

    # Byte-identical packets come back: nothing was re-encoded.
    read_packets, read_rate, read_channels = read_ogg_opus_packets(result.data)
    assert read_packets == packets
    assert (read_rate, read_channels) == (rate, 1)

    # libsndfile plays it.  It decodes at the OpusHead's input sample rate and drops the pre-skip.
    audio, sr = soundfile.read(io.BytesIO(result.data), dtype="int16")
    assert sr == rate
    assert audio.ndim == 1
    expected = len(packets) * frame_ms / 1000
    assert abs(len(audio) / sr - expected) <= frame_ms / 1000
    assert len(audio) == (len(packets) * frame_ms * 48 - OPUS_PRE_SKIP) * rate // 48000
    assert np.abs(audio).max() > 1000  # real audio, not silence


def test_opus_head_and_granule() -> None:
    packets = encode_opus(16000, 60, 1.0)
    data = build_ogg_opus(packets, input_sample_rate=16000).data
    head = _opus_head(data)
    magic, version, channels, pre_skip, rate, gain, family = struct.unpack("<8sBBHIhB", head)
    assert (magic, version, channels, pre_skip, rate, gain, family) == (b"OpusHead", 1, 1, 312, 16000, 0, 0)
    assert b"OpusTags" in data
    granule, flags = _last_granule(data)
    # RFC 7845: the granule is the decoded sample count (the pre-skip included, which the device's
    # encoder delay already is), so the stream starts at granule 0 and ends at the packets' total.
    assert granule == len(packets) * 2880
    assert flags & 0x04  # end of stream


@pytest.mark.parametrize("seconds", [0.06, 0.6, 1.5, 4.0])
def test_every_page_granule_counts_decoded_samples(seconds: float) -> None:
    packets = encode_opus(16000, 60, seconds)
    pages = _pages(build_ogg_opus(packets).data)
    assert pages[0][0] & 0x02  # beginning of stream
    assert pages[0][1:] == (0, 1)  # OpusHead
    assert pages[1][1:] == (0, 1)  # OpusTags
    done = 0
    for _, granule, completed in pages[2:]:
        done += completed
        assert granule == done * 2880
    assert done == len(packets)


def test_ffmpeg_decodes_at_48k() -> None:
    packets = encode_opus(16000, 60, 2.0)
    data = build_ogg_opus(packets).data
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        assert stream.codec_context.sample_rate == 48000
    assert samples == len(packets) * 2880 - OPUS_PRE_SKIP


def test_48k_input_rate_reads_at_48k() -> None:
    packets = encode_opus(48000, 20, 1.0)
    data = build_ogg_opus(packets, input_sample_rate=48000).data
    audio, sr = soundfile.read(io.BytesIO(data))
    assert sr == 48000
    assert abs(len(audio) - len(packets) * 960) <= 960


def test_stereo() -> None:
    packets = encode_opus(16000, 60, 2.0, channels=2)
    result = build_ogg_opus(packets, input_sample_rate=16000, channels=2)
    assert _opus_head(result.data)[9] == 2
    read_packets, rate, channels = read_ogg_opus_packets(result.data)
    assert read_packets == packets
    assert (rate, channels) == (16000, 2)
    audio, sr = soundfile.read(io.BytesIO(result.data))
    assert audio.shape[1] == 2
    assert abs(len(audio) / sr - 2.0) <= 0.06
    # The left channel was encoded louder than the right one.
    assert np.abs(audio[:, 0]).mean() > 1.5 * np.abs(audio[:, 1]).mean()


@pytest.mark.parametrize("n_packets", [1, 2, 8, 16, 17, 18])
def test_short_clips_play(n_packets: int) -> None:
    # Up to ~1 s everything fits in one Ogg page (first page == last page); libsndfile is strict there.
    packets = encode_opus(16000, 60, 0.06 * n_packets)
    result = build_ogg_opus(packets)
    assert result.duration_ms == 60 * n_packets
    assert read_ogg_opus_packets(result.data)[0] == packets
    audio, sr = soundfile.read(io.BytesIO(result.data), dtype="int16")
    assert sr == 16000
    assert len(audio) == (n_packets * 2880 - OPUS_PRE_SKIP) // 3  # exactly: everything but the pre-skip


def test_mixed_frame_sizes() -> None:
    packets = encode_opus(16000, 20, 0.2) + encode_opus(16000, 60, 0.6)
    result = build_ogg_opus(packets)
    assert result.duration_ms == 10 * 20 + 10 * 60
    assert read_ogg_opus_packets(result.data)[0] == packets
    granule, _ = _last_granule(result.data)
    assert granule == 800 * 48


def test_accepts_tuple_and_bytearray() -> None:
    packets = encode_opus(16000, 60, 0.3)
    result = build_ogg_opus(tuple(bytearray(p) for p in packets))
    assert read_ogg_opus_packets(result.data)[0] == packets


def test_empty_raises() -> None:
    with pytest.raises(ValueError, match="no audio packets"):
        build_ogg_opus([])


@pytest.mark.parametrize("bad", [b"", bytes([0x0B]), bytes([0x0B, 0x00]), bytes([0x1B, 0x03])])
def test_invalid_packet_raises_before_muxing(bad: bytes) -> None:
    packets = encode_opus(16000, 60, 0.3)
    with pytest.raises(InvalidOpusPacket, match="packet 2"):
        build_ogg_opus([*packets[:2], bad, *packets[2:]])


def test_bad_channels() -> None:
    with pytest.raises(ValueError, match="channels"):
        build_ogg_opus(encode_opus(16000, 60, 0.06), channels=3)


@pytest.mark.parametrize("data", [b"", b"not an ogg file at all" * 10, b"OggS" + bytes(100)])
def test_read_rejects_non_ogg(data: bytes) -> None:
    with pytest.raises(ValueError, match="Ogg Opus"):
        read_ogg_opus_packets(data)


def test_read_rejects_ogg_vorbis() -> None:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(1600, dtype=np.int16), 16000, format="OGG", subtype="VORBIS")
    with pytest.raises(ValueError, match="not an Ogg Opus file"):
        read_ogg_opus_packets(buffer.getvalue())


def test_build_10s_clip_keeps_every_packet() -> None:
    packets = encode_opus(16000, 60, 10.02)
    assert len(packets) == 167
    result = build_ogg_opus(packets)
    assert result.duration_ms == 10_020 and result.packet_count == 167
    assert read_ogg_opus_packets(result.data)[0] == packets
