"""Offline TTS and ASR for real: espeak-ng (and Piper, when installed) speak, local Whisper listens.

The Whisper model loads once per module.  Timings are printed (``pytest -s``), never asserted: the
machine may be busy with other tests.
"""

from __future__ import annotations

import asyncio
import re
import struct
import time
from collections.abc import Iterator

import numpy as np
import pytest

from server.pipeline.asr import WhisperAsr, pcm_to_wav
from server.pipeline.registry import ProviderError
from server.pipeline.tts import EspeakTts, PiperTts, parse_wav, resample

SENTENCE = "Please set the volume to thirty and turn the light red."


@pytest.fixture(scope="module")
def whisper() -> Iterator[WhisperAsr]:
    asr = WhisperAsr()
    # Module-scoped fixtures get no event loop of their own here; the provider keeps no loop state.
    asyncio.run(asr.load())
    print(f"\nwhisper tiny.en load: {asr.load_seconds:.2f} s")
    yield asr
    asyncio.run(asr.close())


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


async def test_espeak_speech_is_transcribed_back_by_whisper(whisper: WhisperAsr) -> None:
    tts = EspeakTts(sample_rate=16000)
    started = time.perf_counter()
    pcm = await tts.synthesize(SENTENCE)
    synthesis_s = time.perf_counter() - started
    assert pcm.dtype == np.int16 and pcm.ndim == 1
    duration = pcm.size / 16000
    assert 2.0 < duration < 6.0

    started = time.perf_counter()
    text = await whisper.transcribe(pcm, 16000)
    print(f"\nespeak {duration:.2f} s of speech in {synthesis_s * 1000:.0f} ms; whisper: {text!r} in "
          f"{time.perf_counter() - started:.2f} s")  # fmt: skip
    heard = words(text)
    assert {"volume", "light", "red"} <= heard
    assert "30" in heard or "thirty" in heard


async def test_whisper_takes_other_sample_rates(whisper: WhisperAsr) -> None:
    pcm = await EspeakTts(sample_rate=24000).synthesize("Hello, what time is it?")
    assert {"time"} <= words(await whisper.transcribe(pcm, sample_rate=24000))


async def test_whisper_edge_cases(whisper: WhisperAsr) -> None:
    assert await whisper.transcribe(np.zeros(0, dtype=np.int16)) == ""
    with pytest.raises(ProviderError, match="English only"):
        await whisper.transcribe(np.zeros(16000, dtype=np.int16), language="zh")
    with pytest.raises(ValueError, match="int16"):
        await whisper.transcribe(np.zeros(16000, dtype=np.float32))


async def test_espeak_voice_follows_the_text() -> None:
    tts = EspeakTts()
    assert tts.voice_for("你好，我是小智。") == "cmn"
    assert tts.voice_for("Hello there.") == "en-us"
    assert EspeakTts(voice="en-gb").voice_for("你好") == "en-gb"
    chinese = await tts.synthesize("你好，我是小智。")
    assert chinese.size / tts.sample_rate > 0.8
    assert np.abs(chinese.astype(np.int32)).max() > 3000


async def test_espeak_speed_and_edge_cases() -> None:
    slow = await EspeakTts(speed=100).synthesize("one two three four five six")
    fast = await EspeakTts(speed=300).synthesize("one two three four five six")
    assert slow.size > 1.8 * fast.size
    assert (await EspeakTts().synthesize(" …!? ")).size == 0  # nothing speakable: no process at all
    assert (await EspeakTts().synthesize("-v --help")).size > 0  # text is never taken for options


async def test_espeak_missing_binary_is_a_provider_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ProviderError, match=r"espeak-ng is not installed \(apt-get install espeak-ng\)"):
        await EspeakTts().synthesize("hello")


async def test_piper_speech_is_transcribed_back_by_whisper(whisper: WhisperAsr) -> None:
    tts = PiperTts(sample_rate=16000)
    await tts.load()
    started = time.perf_counter()
    pcm = await tts.synthesize(SENTENCE)
    elapsed = time.perf_counter() - started
    print(f"\npiper load {tts.load_seconds:.2f} s; {pcm.size / 16000:.2f} s of speech in {elapsed:.2f} s")
    heard = words(await whisper.transcribe(pcm, 16000))
    assert {"volume", "light", "red"} <= heard
    assert (await tts.synthesize("...")).size == 0
    await tts.close()


async def test_piper_with_a_missing_voice_file_is_a_provider_error(tmp_path) -> None:
    with pytest.raises(ProviderError, match="not found"):
        await PiperTts(model_path=tmp_path / "nope.onnx").synthesize("hello")


# ---- resampling and WAV ------------------------------------------------------------------------------------


def tone(freq: float, rate: int, seconds: float = 1.0, amplitude: float = 10000) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype(np.int16)


def level_at(pcm: np.ndarray, rate: int, freq: float) -> float:
    """Amplitude of ``freq`` in ``pcm`` (windowed DFT at that frequency, edges excluded)."""
    x = pcm[rate // 10 : -rate // 10].astype(np.float64)
    window = np.hanning(x.size)
    phasor = np.exp(-2j * np.pi * freq * np.arange(x.size) / rate)
    return float(2 * abs(np.sum(x * window * phasor)) / window.sum())


@pytest.mark.parametrize(("src", "dst"), [(22050, 24000), (22050, 16000), (24000, 16000), (16000, 24000)])
def test_resample_keeps_tones_and_removes_aliases(src: int, dst: int) -> None:
    out = resample(tone(1000, src), src, dst)
    assert out.dtype == np.int16
    assert abs(out.size - dst) <= 1
    assert level_at(out, dst, 1000) == pytest.approx(10000, rel=0.01)
    if dst < src:  # a tone above the new Nyquist frequency must not fold back into the audible band
        high = 0.5 * dst + 2000
        folded = dst - high
        assert level_at(resample(tone(high, src), src, dst), dst, folded) < 10000 * 1e-3


def test_resample_same_rate_and_empty() -> None:
    pcm = tone(440, 16000)
    assert np.array_equal(resample(pcm, 16000, 16000), pcm)
    assert resample(np.zeros(0, np.int16), 22050, 24000).size == 0


def test_parse_wav_tolerates_streaming_placeholder_sizes() -> None:
    pcm = tone(300, 22050, 0.1)
    wav = bytearray(pcm_to_wav(pcm, 22050))
    assert np.array_equal(parse_wav(bytes(wav))[0], pcm)
    struct.pack_into("<I", wav, 4, 0x7FFFF024)  # what espeak-ng --stdout writes: it can't seek back
    struct.pack_into("<I", wav, 40, 0x7FFFF000)
    samples, rate = parse_wav(bytes(wav) + b"\x01")  # and a stray odd byte at the end
    assert rate == 22050 and np.array_equal(samples, pcm)
    with pytest.raises(ProviderError, match="not a WAV"):
        parse_wav(b"ID3 this is an mp3")
