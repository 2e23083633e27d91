from __future__ import annotations

import numpy as np
import pytest

from server.audio.decoder import OpusDecoder
from server.audio.encoder import OpusEncoder
from server.audio.opus_packets import packet_samples
from tests.support.audio import speech_like


def test_pcm_in_any_chunk_sizes_becomes_60ms_packets_that_decode_back() -> None:
    pcm = speech_like(24000, 1.0)
    encoder = OpusEncoder(24000, 60)
    packets = []
    for start in range(0, len(pcm), 777):
        packets += list(encoder.encode(pcm[start : start + 777]))
    packets += list(encoder.flush())
    assert len(packets) == 17  # 1.0 s = 16 whole frames + one padded
    assert all(packet_samples(p, 24000) == 1440 for p in packets)
    decoder = OpusDecoder(24000)
    out = np.concatenate([decoder.decode(p) for p in packets])
    assert len(out) == 17 * 1440 and np.abs(out).max() > 1000


def test_flush_without_pending_audio_yields_nothing() -> None:
    assert list(OpusEncoder(16000, 20).flush()) == []


@pytest.mark.parametrize(("rate", "frame"), [(44100, 60), (24000, 30)])
def test_unsupported_settings_are_refused(rate: int, frame: int) -> None:
    with pytest.raises(ValueError):
        OpusEncoder(rate, frame)
