"""Server-side voice activity detection with Silero VAD (ONNX), per connection or batched across many.

Audio is int16 mono PCM at 16 kHz, in chunks of any length.  It is cut into 512-sample windows (32 ms)
counted from the start of the stream; each window goes to the model with the 64 samples before it as
context (zeros before the first) and the stream's own RNN state, as silero-vad's ``OnnxWrapper`` does.

Decision per window (as the xiaozhi Python reference server does): speech if prob ≥ ``threshold``,
silence if prob ≤ ``threshold_low``, otherwise the previous window's decision.  The stream is *voiced*
while ≥ ``votes`` of the last ``window`` windows are speech.  Not voiced → voiced emits
``speech_start``; once in speech, ``min_silence_ms`` after the end of the last speech window (and not
voiced) emits ``speech_end`` with the segment's sample offsets.  Offsets count samples since the stream
was opened or last reset.

:class:`VadStream` runs the model itself (one window per call).  :class:`VadBatcher` collects audio
from many streams and evaluates every stream's next window in one onnx call per round, which is what
makes hundreds of simultaneous devices affordable; its results equal :class:`VadStream`'s.
"""

from __future__ import annotations

import functools
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

__all__ = [
    "CONTEXT_SAMPLES",
    "SAMPLE_RATE",
    "WINDOW_SAMPLES",
    "BatchedVadStream",
    "SileroModel",
    "VadBatcher",
    "VadConfig",
    "VadEvent",
    "VadModelMissing",
    "VadStream",
    "default_model_path",
]

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 512
CONTEXT_SAMPLES = 64
_STATE_SIZE = 128


def default_model_path() -> Path:
    """``resources/models/silero_vad.onnx`` next to the ``server`` package directory."""
    return Path(__file__).resolve().parents[2] / "resources" / "models" / "silero_vad.onnx"


class VadModelMissing(FileNotFoundError):
    """The Silero VAD model file is not where it should be."""


class SileroModel:
    """The Silero VAD onnx model on one CPU thread.

    ``__call__`` takes ``inputs [batch, 64+512]`` float32 (context + window, in [-1, 1]) and
    ``states [2, batch, 128]``; returns ``(probs [batch], states [2, batch, 128])``.
    onnxruntime sessions may be run from several threads at once.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_model_path()
        if not self.path.is_file():
            raise VadModelMissing(
                f"Silero VAD model not found at {self.path}: it ships in the repository as "
                "resources/models/silero_vad.onnx (from the silero-vad wheel, MIT)"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(self.path), sess_options=options, providers=["CPUExecutionProvider"])
        names = {i.name for i in self._session.get_inputs()}
        if names != {"input", "state", "sr"}:
            raise ValueError(f"{self.path} is not the Silero VAD v5+ model (inputs {sorted(names)})")
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    @classmethod
    @functools.cache
    def shared(cls) -> SileroModel:
        """One process-wide model from the default path (loaded on first use)."""
        return cls()

    def __call__(self, inputs: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, new_states = self._session.run(None, {"input": inputs, "state": states, "sr": self._sr})
        return probs[:, 0], new_states


@dataclass(frozen=True, slots=True)
class VadConfig:
    threshold: float = 0.5
    threshold_low: float = 0.3
    min_silence_ms: int = 700
    votes: int = 3  # voiced when at least this many ...
    window: int = 5  # ... of the last this-many windows are speech

    def __post_init__(self) -> None:
        if not 0 <= self.threshold_low <= self.threshold <= 1:
            raise ValueError("need 0 <= threshold_low <= threshold <= 1")
        if not 1 <= self.votes <= self.window:
            raise ValueError("need 1 <= votes <= window")
        if self.min_silence_ms < 0:
            raise ValueError("min_silence_ms must be >= 0")


@dataclass(frozen=True, slots=True)
class VadEvent:
    """``speech_start``: ``start`` is the first sample of the first speech window of the segment.

    ``speech_end``: the segment is ``[start, end)`` (``end`` = end of its last speech window).
    ``at`` is the stream offset at which the decision was made (end of the deciding window).
    """

    kind: Literal["speech_start", "speech_end"]
    start: int
    end: int | None
    at: int

    @property
    def start_ms(self) -> float:
        return self.start * 1000 / SAMPLE_RATE

    @property
    def end_ms(self) -> float | None:
        return None if self.end is None else self.end * 1000 / SAMPLE_RATE


def _as_float(pcm: np.ndarray | bytes | bytearray | memoryview) -> np.ndarray:
    if isinstance(pcm, bytes | bytearray | memoryview):
        pcm = np.frombuffer(pcm, dtype="<i2")
    elif not isinstance(pcm, np.ndarray) or pcm.dtype != np.int16:
        raise TypeError(f"VAD wants int16 PCM (numpy int16 or bytes), got {type(pcm).__name__}")
    if pcm.ndim != 1:
        raise ValueError(f"VAD wants mono 1-D PCM, got shape {pcm.shape}")
    return pcm.astype(np.float32) / 32768.0


class _Track:
    """One stream's audio buffer, model state and decision state (no model)."""

    __slots__ = (
        "_audio",
        "_min_silence",
        "_recent",
        "config",
        "in_speech",
        "last_probabilities",
        "last_speech",
        "last_speech_end",
        "segment_start",
        "state",
        "windows",
    )

    def __init__(self, config: VadConfig) -> None:
        self.config = config
        self._min_silence = config.min_silence_ms * SAMPLE_RATE // 1000
        self.reset()

    def reset(self) -> None:
        self._audio = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)  # context, then not-yet-evaluated samples
        self.state = np.zeros((2, _STATE_SIZE), dtype=np.float32)
        self.windows = 0
        self._recent: deque[bool] = deque(maxlen=self.config.window)
        self.last_speech = False
        self.in_speech = False
        self.segment_start = 0
        self.last_speech_end = 0
        self.last_probabilities: list[float] = []

    @property
    def samples(self) -> int:
        """Samples received since the start (or reset)."""
        return self.windows * WINDOW_SAMPLES + len(self._audio) - CONTEXT_SAMPLES

    def append(self, audio: np.ndarray) -> None:
        if audio.size:
            self._audio = np.concatenate((self._audio, audio))

    def pending(self) -> int:
        return (len(self._audio) - CONTEXT_SAMPLES) // WINDOW_SAMPLES

    def next_input(self) -> np.ndarray:
        return self._audio[: CONTEXT_SAMPLES + WINDOW_SAMPLES]

    def advance(self, prob: float, state: np.ndarray) -> VadEvent | None:
        """Consume the window ``next_input()`` returned, whose model outputs are ``prob`` and ``state``."""
        self._audio = self._audio[WINDOW_SAMPLES:]
        self.state = state
        self.last_probabilities.append(prob)
        config = self.config
        start = self.windows * WINDOW_SAMPLES
        end = start + WINDOW_SAMPLES
        self.windows += 1

        if prob >= config.threshold:
            speech = True
        elif prob <= config.threshold_low:
            speech = False
        else:
            speech = self.last_speech
        self.last_speech = speech
        recent = self._recent
        recent.append(speech)
        if speech:
            self.last_speech_end = end
        voiced = sum(recent) >= config.votes

        if not self.in_speech:
            if voiced:
                self.in_speech = True
                first = list(recent).index(True)
                self.segment_start = (self.windows - len(recent) + first) * WINDOW_SAMPLES
                return VadEvent("speech_start", self.segment_start, None, end)
        elif not voiced and end - self.last_speech_end >= self._min_silence:
            self.in_speech = False
            return VadEvent("speech_end", self.segment_start, self.last_speech_end, end)
        return None


class VadStream:
    """VAD for one connection, evaluating the model itself: ``feed(pcm) -> events``."""

    def __init__(self, model: SileroModel | None = None, config: VadConfig | None = None) -> None:
        self._model = model if model is not None else SileroModel.shared()
        self._track = _Track(config or VadConfig())

    @property
    def config(self) -> VadConfig:
        return self._track.config

    @property
    def speech_active(self) -> bool:
        """Inside a speech segment (``speech_start`` emitted, ``speech_end`` not yet)."""
        return self._track.in_speech

    @property
    def samples(self) -> int:
        return self._track.samples

    @property
    def last_probabilities(self) -> list[float]:
        """Speech probability of each window evaluated by the last ``feed``."""
        return self._track.last_probabilities

    def feed(self, pcm: np.ndarray | bytes) -> list[VadEvent]:
        """Add int16 16 kHz PCM of any length; evaluate every complete window; return the events."""
        track = self._track
        track.append(_as_float(pcm))
        track.last_probabilities = []
        events = []
        while track.pending():
            probs, states = self._model(track.next_input()[None], track.state[:, None])
            event = track.advance(float(probs[0]), states[:, 0])
            if event is not None:
                events.append(event)
        return events

    def reset(self) -> None:
        """Start over: drop buffered audio, model state and decisions; offsets restart at 0."""
        self._track.reset()


class BatchedVadStream:
    """A stream in a :class:`VadBatcher`: ``push`` audio, get events from ``batcher.run()``."""

    def __init__(self, batcher: VadBatcher, stream_id: int, config: VadConfig) -> None:
        self.id = stream_id
        self._batcher = batcher
        self._track = _Track(config)
        self._incoming: list[np.ndarray] = []
        self._reset_requested = False
        self.closed = False

    @property
    def config(self) -> VadConfig:
        return self._track.config

    @property
    def speech_active(self) -> bool:
        return not self._reset_requested and self._track.in_speech

    @property
    def last_probabilities(self) -> list[float]:
        """Speech probability of each window this stream had evaluated by the last ``run``."""
        return self._track.last_probabilities

    @property
    def reset_pending(self) -> bool:
        """A ``reset`` waits for the next ``run``; until then ``evaluated_samples`` is the old stream's."""
        return self._reset_requested

    @property
    def evaluated_samples(self) -> int:
        """How far the model has looked: audio before this offset has produced all its events."""
        return self._track.windows * WINDOW_SAMPLES

    def push(self, pcm: np.ndarray | bytes) -> None:
        """Queue int16 16 kHz PCM of any length for the next ``run``."""
        audio = _as_float(pcm)
        with self._batcher._lock:
            if self.closed:
                raise RuntimeError(f"VAD stream {self.id} is closed")
            self._incoming.append(audio)

    def reset(self) -> None:
        """Start over at the next ``run`` (queued audio is dropped; offsets restart at 0)."""
        with self._batcher._lock:
            self._incoming = []
            self._reset_requested = True


class VadBatcher:
    """Batched VAD for many connections, driven by one task: ``open``/``push``/``run``/``close``.

    ``run()`` evaluates every complete window pushed since the previous run, for all streams, with one
    onnx call per round (round *k* holds each stream's *k*-th pending window, since a stream's windows
    depend on each other through the RNN state).  ``push``, ``reset``, ``open`` and ``close`` are cheap
    and thread-safe, so ``run()`` may be called via ``asyncio.to_thread`` while the loop keeps pushing;
    only one ``run()`` may be in progress at a time.
    """

    def __init__(
        self, model: SileroModel | None = None, config: VadConfig | None = None, max_batch: int | None = None
    ) -> None:
        self._model = model if model is not None else SileroModel.shared()
        self.config = config or VadConfig()
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._streams: dict[int, BatchedVadStream] = {}
        self._next_id = 1

    def __len__(self) -> int:
        return len(self._streams)

    def open(self, config: VadConfig | None = None) -> BatchedVadStream:
        with self._lock:
            stream = BatchedVadStream(self, self._next_id, config or self.config)
            self._next_id += 1
            self._streams[stream.id] = stream
        return stream

    def close(self, stream: BatchedVadStream) -> None:
        with self._lock:
            stream.closed = True
            stream._incoming = []
            self._streams.pop(stream.id, None)

    def run(self) -> dict[int, list[VadEvent]]:
        """Evaluate all pending windows; return the events by stream id (streams without events omitted)."""
        if not self._run_lock.acquire(blocking=False):
            raise RuntimeError("VadBatcher.run() is already running")
        try:
            return self._run()
        finally:
            self._run_lock.release()

    def _run(self) -> dict[int, list[VadEvent]]:
        with self._lock:
            taken = []
            for stream in self._streams.values():
                taken.append((stream, stream._incoming, stream._reset_requested))
                stream._incoming = []
                stream._reset_requested = False
        tracks: list[tuple[int, _Track]] = []
        for stream, chunks, reset in taken:
            track = stream._track
            if reset:
                track.reset()
            if chunks:
                track.append(chunks[0] if len(chunks) == 1 else np.concatenate(chunks))
            track.last_probabilities = []
            tracks.append((stream.id, track))

        events: dict[int, list[VadEvent]] = {}
        active = [item for item in tracks if item[1].pending()]
        step = self.max_batch or len(active) or 1
        while active:
            for lo in range(0, len(active), step):
                self._evaluate(active[lo : lo + step], events)
            active = [item for item in active if item[1].pending()]

        with self._lock:  # drop what a concurrent close() or reset() made stale
            for stream, _, _ in taken:
                if stream.id in events and (stream.closed or stream._reset_requested):
                    del events[stream.id]
        return events

    def _evaluate(self, batch: list[tuple[int, _Track]], events: dict[int, list[VadEvent]]) -> None:
        if len(batch) == 1:
            track = batch[0][1]
            inputs, states = track.next_input()[None], track.state[:, None]
        else:
            inputs = np.stack([track.next_input() for _, track in batch])
            states = np.stack([track.state for _, track in batch], axis=1)
        probs, new_states = self._model(inputs, states)
        for i, (stream_id, track) in enumerate(batch):
            event = track.advance(float(probs[i]), new_states[:, i])
            if event is not None:
                events.setdefault(stream_id, []).append(event)
