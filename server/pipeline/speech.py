"""Sentences → downlink opus packets, off the event loop: TTS, resampling and opus encoding.

The device server's loop must only pace frames. Measured with 100 devices speaking (bench/README.md): resampling
and encoding a sentence on the loop cost 10–20 ms slices and gave 80 ms jitter p99; threads do not help (the loop
then waits for the GIL). So local engines (espeak-ng, Piper) run in a small pool of worker *processes*, each
holding its own provider, returning the sentence's opus packets.

A request has a priority: a turn's first sentence (the one a user is waiting for) goes before sentences that are
synthesized ahead while an earlier one plays. Requests wait in a heap in front of the pool, so the pool itself
never holds more than one job per worker and a late first sentence overtakes every queued later one.

Providers that cannot move to a process (HTTP services, providers built in code) use :class:`InProcessSpeech`:
the provider as usual, then encoding in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import multiprocessing
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

import numpy as np

from server.audio.encoder import OpusEncoder
from server.pipeline.registry import ProviderError
from server.pipeline.tts import TtsProvider, resample

log = logging.getLogger(__name__)

FIRST = 0  # priority of a turn's first sentence
AHEAD = 1  # priority of a sentence synthesized while an earlier one plays

Recipe = tuple[Callable[..., TtsProvider], dict[str, Any]]


class SpeechRenderer(Protocol):
    sample_rate: int

    async def render(self, text: str, *, priority: int = AHEAD) -> list[bytes]:
        """``text`` spoken and encoded: opus packets of ``frame_ms`` at :attr:`sample_rate`, the last one padded."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def encode_sentence(pcm: np.ndarray, pcm_rate: int, sample_rate: int, frame_ms: int) -> list[bytes]:
    if pcm_rate != sample_rate:
        pcm = resample(pcm, pcm_rate, sample_rate)
    encoder = OpusEncoder(sample_rate, frame_ms)
    return [*encoder.encode(pcm), *encoder.flush()]


class InProcessSpeech:
    """The provider in this process; encoding in a thread. For providers without a worker recipe."""

    def __init__(self, tts: TtsProvider, sample_rate: int, frame_ms: int) -> None:
        self.tts = tts
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms

    async def start(self) -> None:
        load = getattr(self.tts, "load", None)
        if load is not None:
            await load()

    async def render(self, text: str, *, priority: int = AHEAD) -> list[bytes]:
        pcm = await self.tts.synthesize(text)
        if not len(pcm):
            return []
        return await asyncio.to_thread(encode_sentence, pcm, self.tts.sample_rate, self.sample_rate, self.frame_ms)

    async def close(self) -> None:
        pass


# ---- the worker processes ------------------------------------------------------------------------------------

_worker: tuple[TtsProvider, asyncio.AbstractEventLoop, int, int] | None = None


def _init_worker(recipe: Recipe, sample_rate: int, frame_ms: int) -> None:
    global _worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle; it closes the pool
    factory, kwargs = recipe
    _worker = (factory(**kwargs), asyncio.new_event_loop(), sample_rate, frame_ms)


def _render_in_worker(text: str) -> list[bytes]:
    assert _worker is not None, "speech worker not initialised"
    tts, loop, sample_rate, frame_ms = _worker
    pcm = loop.run_until_complete(tts.synthesize(text))
    if not len(pcm):
        return []
    return encode_sentence(pcm, tts.sample_rate, sample_rate, frame_ms)


def _load_in_worker() -> None:
    assert _worker is not None
    load = getattr(_worker[0], "load", None)
    if load is not None:
        _worker[1].run_until_complete(load())


class PooledSpeech:
    """A pool of ``workers`` processes, each with its own provider built from ``recipe``."""

    def __init__(self, recipe: Recipe, sample_rate: int, frame_ms: int, workers: int) -> None:
        if workers < 1:
            raise ValueError("a speech pool needs at least one worker")
        self.recipe = recipe
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._free = workers
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self.rendered = 0

    def _new_pool(self) -> ProcessPoolExecutor:
        # forkserver, not fork: the server process has threads (onnxruntime, asyncio's executor) that fork would copy
        # mid-flight.
        return ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=_init_worker,
            initargs=(self.recipe, self.sample_rate, self.frame_ms),
        )

    async def start(self) -> None:
        """Start every worker and load its model now, so the first sentence does not pay for it."""
        if self._pool is None:
            self._pool = self._new_pool()
        loop = asyncio.get_running_loop()
        try:
            await asyncio.gather(*(loop.run_in_executor(self._pool, _load_in_worker) for _ in range(self.workers)))
        except Exception as exc:
            log.warning("speech workers: model not loaded at start: %s", exc)

    async def render(self, text: str, *, priority: int = AHEAD) -> list[bytes]:
        await self._acquire(priority)
        try:
            if self._pool is None:
                self._pool = self._new_pool()
            pool = self._pool
            try:
                packets = await asyncio.get_running_loop().run_in_executor(pool, _render_in_worker, text)
            except BrokenProcessPool:
                if self._pool is pool:  # the first request to notice replaces the pool
                    self._pool = None
                    pool.shutdown(wait=False, cancel_futures=True)
                raise ProviderError("a speech worker process died; it is restarted for the next sentence") from None
            self.rendered += 1
            return packets
        finally:
            self._release()

    async def _acquire(self, priority: int) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (priority, next(self._order), gate)
        heapq.heappush(self._waiting, entry)
        try:
            await gate
        except asyncio.CancelledError:
            if gate.done() and not gate.cancelled():
                self._release()  # the slot was handed over just as we were cancelled: pass it on
            else:
                self._waiting.remove(entry)
                heapq.heapify(self._waiting)
            raise

    def _release(self) -> None:
        while self._waiting:
            _, _, gate = heapq.heappop(self._waiting)
            if not gate.done():
                gate.set_result(None)
                return
        self._free += 1

    @property
    def queued(self) -> int:
        return len(self._waiting)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)


def make_speech(tts: TtsProvider, sample_rate: int, frame_ms: int, workers: int) -> SpeechRenderer:
    """Worker processes when the provider has a recipe and ``workers`` > 0, else the provider in process."""
    recipe = tts.worker_recipe()
    if recipe is None or workers <= 0:
        return InProcessSpeech(tts, sample_rate, frame_ms)
    return PooledSpeech(recipe, sample_rate, frame_ms, workers)
