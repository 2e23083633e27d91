"""Provider selection from the reference server's config shape, and its error messages."""

from __future__ import annotations

import pytest

from server.config import ConfigError
from server.pipeline.asr import OpenAiAsr, WhisperAsr
from server.pipeline.llm import LocalLlm, OpenAiLlm
from server.pipeline.registry import DEFAULT_SELECTED, build_asr, build_llm, build_pipeline, build_tts
from server.pipeline.tts import EspeakTts, OpenAiTts, PiperTts

REFERENCE_CONFIG = {
    "selected_module": {"ASR": "whisper", "LLM": "qwen", "TTS": "robot"},
    "ASR": {"whisper": {"type": "whisper", "beam_size": 5}, "groq": {"type": "openai", "base_url": "http://x/v1"}},
    "LLM": {
        "local": {"type": "local"},
        "qwen": {"type": "openai", "base_url": "http://x/v1", "model_name": "qwen-plus", "api_key": "sk-1"},
    },
    "TTS": {"robot": {"type": "espeak", "voice": "en-gb", "speed": 200, "sample_rate": 16000}},
}


async def test_offline_defaults_need_no_configuration() -> None:
    assert DEFAULT_SELECTED == {"ASR": "whisper", "LLM": "local", "TTS": "espeak"}
    providers = build_pipeline({})
    assert isinstance(providers.asr, WhisperAsr)
    assert isinstance(providers.llm, LocalLlm)
    assert isinstance(providers.tts, EspeakTts) and providers.tts.sample_rate == 24000
    await providers.close()


async def test_reference_shaped_config_selects_named_instances() -> None:
    providers = build_pipeline(REFERENCE_CONFIG)
    assert isinstance(providers.asr, WhisperAsr) and providers.asr.beam_size == 5
    assert isinstance(providers.llm, OpenAiLlm) and providers.llm.model == "qwen-plus"
    assert providers.llm.url == "http://x/v1/chat/completions"
    assert isinstance(providers.tts, EspeakTts)
    assert (providers.tts.voice, providers.tts.speed, providers.tts.sample_rate) == ("en-gb", 200, 16000)
    await providers.close()


async def test_each_type_can_be_built() -> None:
    built = [
        build_asr("groq", REFERENCE_CONFIG["ASR"]),
        build_llm("local", {"local": {}}),  # an instance named after its type may omit "type"
        build_tts("piper", {}),  # a bare type name is a built-in instance
        build_tts("cloud", {"cloud": {"type": "openai", "url": "http://x/v1", "response_format": "wav"}}),
    ]
    assert [type(p) for p in built] == [OpenAiAsr, LocalLlm, PiperTts, OpenAiTts]
    for provider in built:
        await provider.close()


@pytest.mark.parametrize(
    ("build", "selected", "configs", "message"),
    [
        (
            build_llm,
            "qwen",
            {"qwen": {"type": "gpt"}},
            "LLM 'qwen' has unknown type 'gpt'; allowed types: local, openai",
        ),
        (
            build_llm,
            "qwen",
            {"qwen": {"type": "openai", "model": "m"}},
            "LLM 'qwen' (type openai): missing key 'base_url'",
        ),
        (build_llm, "qwen", {"qwen": {"type": "openai", "base_url": "http://x"}}, "missing key 'model'"),
        (build_asr, "mine", {"mine": {"model_dir": "/m"}}, "ASR 'mine' has no 'type'; allowed types: whisper, openai"),
        (
            build_asr,
            "whisper",
            {"whisper": {"type": "whisper", "beam": 5}},
            "unknown key 'beam' (allowed keys: model_dir",
        ),
        (build_tts, "espeak", {"espeak": {"type": "espeak", "sample_rate": 44100}}, "'sample_rate'"),
        (
            build_tts,
            "edge",
            {"espeak": {}},
            "TTS is 'edge' but TTS defines no such instance (defined: espeak; built-in",
        ),
        (build_tts, "espeak", {"espeak": "fast"}, "TTS 'espeak' must be a mapping of settings"),
    ],
)
def test_configuration_mistakes_are_explained(build, selected: str, configs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build(selected, configs)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
