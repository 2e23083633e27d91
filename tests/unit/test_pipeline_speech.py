"""Speech rendering off the event loop: real espeak-ng in real worker processes, real opus packets."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from server.audio.decoder import OpusDecoder
from server.pipeline.registry import ProviderError
from server.pipeline.speech import AHEAD, FIRST, InProcessSpeech, PooledSpeech, make_speech
from server.pipeline.tts import EspeakTts, OpenAiTts
from tests.support.crashing_tts import DIE, CrashingEspeak

LONG = "This sentence is long enough to keep a speech worker busy for a little while, and then some more words."


def seconds(packets: list[bytes], rate: int) -> float:
    decoder = OpusDecoder(rate)
    return sum(len(decoder.decode(p)) for p in packets) / rate


async def test_pool_renders_a_sentence_as_packets_of_the_downlink_rate() -> None:
    speech = PooledSpeech(EspeakTts(sample_rate=16000).worker_recipe(), 24000, 60, workers=1)
    await speech.start()
    try:
        packets = await speech.render("Hello there, the light is now red.", priority=FIRST)
        alone = await EspeakTts(sample_rate=24000).synthesize("Hello there, the light is now red.")
    finally:
        await speech.close()
    assert packets, "no audio"
    # 60 ms frames at 24 kHz, resampled from the engine's 16 kHz: as long as the same sentence spoken at 24 kHz
    assert OpusDecoder(24000).decode(packets[0]).size == 1440
    assert abs(seconds(packets, 24000) - len(alone) / 24000) < 0.13


async def test_unspeakable_text_gives_no_packets() -> None:
    speech = PooledSpeech(EspeakTts().worker_recipe(), 24000, 60, workers=1)
    try:
        assert await speech.render("...!") == []
    finally:
        await speech.close()


async def test_a_first_sentence_overtakes_sentences_queued_ahead() -> None:
    speech = PooledSpeech(EspeakTts().worker_recipe(), 24000, 60, workers=1)
    await speech.start()
    finished: list[str] = []

    async def render(name: str, text: str, priority: int) -> None:
        await speech.render(text, priority=priority)
        finished.append(name)

    try:
        busy = asyncio.create_task(render("busy", LONG, AHEAD))
        await asyncio.sleep(0)  # it holds the only worker
        ahead = [asyncio.create_task(render(f"ahead{i}", LONG, AHEAD)) for i in range(3)]
        await asyncio.sleep(0)
        first = asyncio.create_task(render("first", "Hi.", FIRST))
        await asyncio.gather(busy, *ahead, first)
    finally:
        await speech.close()
    assert finished[0] == "busy"
    assert finished[1] == "first", finished


async def test_a_cancelled_request_gives_its_place_back() -> None:
    speech = PooledSpeech(EspeakTts().worker_recipe(), 24000, 60, workers=1)
    await speech.start()
    try:
        busy = asyncio.create_task(speech.render(LONG))
        await asyncio.sleep(0)
        waiting = asyncio.create_task(speech.render(LONG))
        await asyncio.sleep(0)
        assert speech.queued == 1
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert speech.queued == 0
        await busy
        # The slot came back: another request runs at once instead of waiting forever.
        assert await asyncio.wait_for(speech.render("Still here."), 30)
    finally:
        await speech.close()


async def test_a_worker_that_dies_is_an_error_for_that_sentence_only() -> None:
    speech = PooledSpeech(CrashingEspeak().worker_recipe(), 24000, 60, workers=1)
    await speech.start()
    try:
        with pytest.raises(ProviderError, match="speech worker process died"):
            await speech.render(DIE)
        assert await speech.render("The next sentence is spoken by a new worker.")
    finally:
        await speech.close()


async def test_provider_errors_come_back_from_the_worker() -> None:
    speech = PooledSpeech(EspeakTts(timeout_s=1e-6).worker_recipe(), 24000, 60, workers=1)
    try:
        with pytest.raises(ProviderError, match="espeak-ng took longer than"):
            await speech.render("Hello.")
    finally:
        await speech.close()


async def test_providers_without_a_recipe_stay_in_process() -> None:
    http = OpenAiTts(base_url="http://127.0.0.1:9/v1", api_key="x")
    assert isinstance(make_speech(http, 24000, 60, workers=2), InProcessSpeech)
    assert isinstance(make_speech(EspeakTts(), 24000, 60, workers=0), InProcessSpeech)
    assert isinstance(make_speech(EspeakTts(), 24000, 60, workers=2), PooledSpeech)


async def test_in_process_speech_resamples_to_the_downlink_rate() -> None:
    speech = InProcessSpeech(EspeakTts(sample_rate=24000), 16000, 60)
    packets = await speech.render("Turn the light blue.")
    pcm = np.concatenate([OpusDecoder(16000).decode(p) for p in packets[:1]])
    assert pcm.size == 960  # 60 ms at 16 kHz
    assert 0.5 < seconds(packets, 16000) < 3.0
