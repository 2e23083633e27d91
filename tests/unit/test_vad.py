"""Silero VAD streams and batcher on real (espeak-ng) speech; the opus decoder wrapper."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from server.audio.decoder import OpusDecoder
from server.audio.opus_packets import InvalidOpusPacket
from server.pipeline.vad import (
    WINDOW_SAMPLES,
    SileroModel,
    VadBatcher,
    VadConfig,
    VadEvent,
    VadModelMissing,
    VadStream,
)
from tests.support.speech import RATE, noise, silence, spoken_pcm16k, to_opus_packets

SENTENCE_A = "Hello, what is the weather like today?"
SENTENCE_B = "Please turn on the lights in the kitchen."
TOLERANCE = 150 * RATE // 1000  # samples


def ms(n: float) -> int:
    return round(n * RATE / 1000)


@pytest.fixture(scope="module")
def model() -> SileroModel:
    return SileroModel.shared()


@pytest.fixture(scope="module")
def speech_a() -> np.ndarray:
    return spoken_pcm16k(SENTENCE_A)


@pytest.fixture(scope="module")
def speech_b() -> np.ndarray:
    return spoken_pcm16k(SENTENCE_B)


def feed_in_chunks(stream: VadStream, pcm: np.ndarray, size: int) -> tuple[list[VadEvent], list[float]]:
    events: list[VadEvent] = []
    probs: list[float] = []
    for i in range(0, len(pcm), size):
        events += stream.feed(pcm[i : i + size])
        probs += stream.last_probabilities
    return events, probs


def segments(events: list[VadEvent]) -> list[tuple[int, int]]:
    """Check the events alternate start/end, and return the (start, end) segments."""
    kinds = [e.kind for e in events]
    assert kinds == ["speech_start", "speech_end"] * (len(events) // 2), kinds
    for start, end in zip(events[::2], events[1::2], strict=True):
        assert start.start == end.start
        assert start.at <= end.at
    return [(e.start, e.end) for e in events[1::2]]  # type: ignore[misc]


def assert_covers(segment: tuple[int, int], start: int, end: int) -> None:
    assert abs(segment[0] - start) <= TOLERANCE, (segment, start, end)
    assert abs(segment[1] - end) <= TOLERANCE, (segment, start, end)


def test_model_io_shapes(model: SileroModel) -> None:
    inputs = {i.name: (i.shape, i.type) for i in model._session.get_inputs()}
    assert len(inputs["input"][0]) == 2 and inputs["input"][1] == "tensor(float)"  # [batch, 64 + 512]
    assert inputs["state"] == ([2, None, 128], "tensor(float)")
    assert inputs["sr"] == ([], "tensor(int64)")
    probs, states = model(np.zeros((3, 64 + WINDOW_SAMPLES), np.float32), np.zeros((2, 3, 128), np.float32))
    assert probs.shape == (3,) and states.shape == (2, 3, 128)


def test_missing_model_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(VadModelMissing, match=r"resources/models/silero_vad\.onnx"):
        SileroModel(tmp_path / "nope.onnx")


def test_silence_gives_no_events(model: SileroModel) -> None:
    stream = VadStream(model)
    events, probs = feed_in_chunks(stream, silence(3000), 960)
    assert events == []
    assert len(probs) == 3000 * RATE // 1000 // WINDOW_SAMPLES
    assert max(probs) < 0.3 and not stream.speech_active


def test_one_utterance(model: SileroModel, speech_a: np.ndarray) -> None:
    lead = ms(800)
    pcm = np.concatenate([silence(800), speech_a, silence(1000)])
    stream = VadStream(model)
    events, _ = feed_in_chunks(stream, pcm, 960)  # 60 ms device frames
    [segment] = segments(events)
    assert_covers(segment, lead, lead + len(speech_a))
    start, end = events
    assert start.at < lead + ms(300), "speech_start should come early in the utterance"
    assert end.at - end.end >= ms(700) and end.at - end.end < ms(700) + WINDOW_SAMPLES
    assert end.start_ms == pytest.approx(segment[0] / 16) and not stream.speech_active


def test_two_sentences_with_a_long_pause_are_two_segments(
    model: SileroModel, speech_a: np.ndarray, speech_b: np.ndarray
) -> None:
    b_at = ms(500) + len(speech_a) + ms(1500)
    pcm = np.concatenate([silence(500), speech_a, silence(1500), speech_b, silence(1000)])
    events, _ = feed_in_chunks(VadStream(model), pcm, 960)
    first, second = segments(events)
    assert_covers(first, ms(500), ms(500) + len(speech_a))
    assert_covers(second, b_at, b_at + len(speech_b))


def test_pause_shorter_than_min_silence_does_not_split(
    model: SileroModel, speech_a: np.ndarray, speech_b: np.ndarray
) -> None:
    pcm = np.concatenate([silence(500), speech_a, silence(500), speech_b, silence(1000)])
    [segment] = segments(feed_in_chunks(VadStream(model), pcm, 960)[0])
    assert_covers(segment, ms(500), ms(500) + len(speech_a) + ms(500) + len(speech_b))
    # min_silence_ms is what decides: the same 500 ms pause splits with a 250 ms setting.
    short = VadStream(model, VadConfig(min_silence_ms=250))
    assert len(segments(feed_in_chunks(short, pcm, 960)[0])) == 2


@pytest.mark.parametrize("rms", [300, 1000, 3000])  # about -40, -30 and -20 dBFS
def test_white_noise_is_not_speech(model: SileroModel, rms: int) -> None:
    stream = VadStream(model)
    events, probs = feed_in_chunks(stream, noise(2000, rms=rms, seed=rms), 960)
    assert events == [] and max(probs) < 0.3


def test_speech_in_noise_is_still_found(model: SileroModel, speech_a: np.ndarray) -> None:
    pcm = np.concatenate([silence(500), speech_a, silence(1000)])
    pcm = np.clip(pcm.astype(np.int32) + noise(len(pcm) * 1000 / RATE, rms=300, seed=7), -32768, 32767)
    [segment] = segments(VadStream(model).feed(pcm.astype(np.int16)))
    assert_covers(segment, ms(500), ms(500) + len(speech_a))


@pytest.mark.parametrize("size", [100, 960, 1500, 511, 513])
def test_chunk_size_does_not_matter(model: SileroModel, speech_a: np.ndarray, size: int) -> None:
    pcm = np.concatenate([silence(300), speech_a, silence(900)])
    expected = feed_in_chunks(VadStream(model), pcm, WINDOW_SAMPLES)
    assert feed_in_chunks(VadStream(model), pcm, size) == expected
    assert len(segments(expected[0])) == 1


def test_irregular_chunks_and_bytes_input(model: SileroModel, speech_a: np.ndarray) -> None:
    pcm = np.concatenate([silence(300), speech_a, silence(900)])
    expected = feed_in_chunks(VadStream(model), pcm, WINDOW_SAMPLES)
    rng = np.random.default_rng(3)
    stream, events, probs, i = VadStream(model), [], [], 0
    while i < len(pcm):
        n = int(rng.integers(0, 2000))
        events += stream.feed(pcm[i : i + n].tobytes())
        probs += stream.last_probabilities
        i += n
    assert (events, probs) == expected
    assert stream.samples == len(pcm)


def test_reset_starts_over(model: SileroModel, speech_a: np.ndarray) -> None:
    pcm = np.concatenate([silence(300), speech_a, silence(900)])
    stream = VadStream(model)
    first = stream.feed(pcm[: ms(1000)])
    assert [e.kind for e in first] == ["speech_start"] and stream.speech_active
    stream.reset()
    assert not stream.speech_active and stream.samples == 0
    assert stream.feed(pcm) == VadStream(model).feed(pcm)


def test_rejects_non_int16(model: SileroModel) -> None:
    with pytest.raises(TypeError):
        VadStream(model).feed(np.zeros(512, np.float32))


def _mixed_audio(k: int, speech_a: np.ndarray, speech_b: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(k)
    parts = [silence(int(rng.integers(0, 900)))]
    for _ in range(int(rng.integers(1, 3))):
        parts += [(speech_a, speech_b)[int(rng.integers(0, 2))], silence(int(rng.integers(100, 1200)))]
    if k % 4 == 0:
        parts.append(noise(int(rng.integers(100, 800)), rms=500, seed=k))
    pcm = np.concatenate(parts)
    return pcm[: len(pcm) - int(rng.integers(0, 3000))]


@pytest.mark.parametrize("max_batch", [None, 6])
def test_batched_equals_single_streams(
    model: SileroModel, speech_a: np.ndarray, speech_b: np.ndarray, max_batch: int | None
) -> None:
    audios = [_mixed_audio(k, speech_a, speech_b) for k in range(20)]
    chunk_sizes = [960, 320, 1500, 512, 100, 2048, 777] * 3

    alone = [feed_in_chunks(VadStream(model), pcm, 960) for pcm in audios]
    assert sum(len(events) for events, _ in alone) >= 20

    batcher = VadBatcher(model, max_batch=max_batch)
    streams, offsets = [], []
    got: dict[int, tuple[list[VadEvent], list[float]]] = {}
    tick = 0
    while any(o < len(pcm) for o, pcm in zip(offsets, audios, strict=False)) or len(streams) < len(audios):
        if len(streams) < len(audios) and tick % 2 == 0:  # streams join at different times
            streams.append(batcher.open())
            offsets.append(0)
            got[streams[-1].id] = ([], [])
        for i, stream in enumerate(streams):
            n = chunk_sizes[i] * (1 + (tick + i) % 3)
            if offsets[i] < len(audios[i]):
                stream.push(audios[i][offsets[i] : offsets[i] + n])
                offsets[i] += n
        results = batcher.run()
        for stream in streams:
            got[stream.id][0].extend(results.get(stream.id, []))
            got[stream.id][1].extend(stream.last_probabilities)
        assert all(results.values())  # only streams with events are reported
        tick += 1
    assert batcher.run() == {}

    for stream, (events, probs) in zip(streams, alone, strict=True):
        b_events, b_probs = got[stream.id]
        assert b_events == events
        np.testing.assert_allclose(b_probs, probs, atol=1e-4)
        batcher.close(stream)
    assert len(batcher) == 0


def test_batcher_close_reset_and_thread(model: SileroModel, speech_a: np.ndarray) -> None:
    pcm = np.concatenate([silence(300), speech_a, silence(900)])
    batcher = VadBatcher(model)
    kept, dropped = batcher.open(), batcher.open()
    kept.push(pcm[: ms(1000)])
    dropped.push(pcm)
    batcher.close(dropped)
    with pytest.raises(RuntimeError):
        dropped.push(pcm)
    events = asyncio.run(asyncio.to_thread(batcher.run))
    assert list(events) == [kept.id] and [e.kind for e in events[kept.id]] == ["speech_start"]
    kept.reset()
    assert not kept.speech_active
    kept.push(pcm)
    assert batcher.run()[kept.id] == VadStream(model).feed(pcm)


def test_decoder_round_trip_and_vad_on_decoded_opus(model: SileroModel, speech_a: np.ndarray) -> None:
    pcm = np.concatenate([silence(600), speech_a, silence(1000)])
    packets = to_opus_packets(pcm, frame_ms=60)
    decoder = OpusDecoder(16000, 1)
    frames = [decoder.decode(p) for p in packets]
    assert all(f.dtype == np.int16 and f.shape == (960,) for f in frames)
    decoded = np.concatenate(frames)
    ref = pcm[: len(pcm) - 400].astype(np.float64)
    # libopus delays the signal by its look-ahead (a few ms): find the lag, then compare.
    probe = ref[ms(600) : ms(1600)]
    lag = max(range(300), key=lambda k: float(np.dot(probe, decoded[ms(600) + k : ms(1600) + k])))
    assert np.corrcoef(ref, decoded[lag : lag + len(ref)])[0, 1] > 0.9

    stream = VadStream(model)
    events = [e for f in frames for e in stream.feed(f)]
    [segment] = segments(events)
    assert_covers(segment, ms(600) + lag, ms(600) + lag + len(speech_a))


def test_decoder_rejects_garbage_and_conceals_loss() -> None:
    decoder = OpusDecoder()
    for garbage in [b"", bytes([0x7A, 0xFF]), bytes([0x7A, 0xFF, 1, 2, 3]), b"\xff\xff\xff"]:
        with pytest.raises(InvalidOpusPacket):
            decoder.decode(garbage)
    [packet] = to_opus_packets(np.zeros(960, np.int16))
    assert decoder.decode(packet).shape == (960,)
    assert decoder.decode_packet_loss().shape == (960,)  # as long as the last packet
    assert decoder.decode_packet_loss(320).shape == (320,)
    with pytest.raises(ValueError):
        decoder.decode_packet_loss(100)
